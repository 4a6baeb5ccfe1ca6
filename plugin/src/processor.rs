//! The audio thread: plays the take as a pure function of the host's song
//! position through [`Player`], follows the host's tempo and tells a bounce
//! from real-time play. Never allocates, frees, locks or does I/O, except
//! the bounded waits of a bounce.

use std::sync::atomic::Ordering;
use std::time::Instant;

use clack_extensions::params::PluginAudioProcessorParams;
use clack_plugin::prelude::*;

use crate::main_thread::MainThread;
use crate::params::ParamId;
use crate::playback::Player;
use crate::requests::Link;
use crate::shared::{Shared, apply_param_events, pack_meter};
use crate::transport::{self, Pace, TempoWatch};
use crate::{OFFLINE_WAIT, XFADE_S};

/// The audio processor: one per activation.
pub struct Processor<'a> {
    shared: &'a Shared<'a>,
    player: Player,
    sample_rate: f64,
    /// Gain applied at the end of the last block, for a click-free ramp.
    gain: f32,
    /// Position for hosts without a transport: frames since activation.
    free_running: i64,
    tempo_watch: TempoWatch,
    pace: Pace,
    /// The last ask for music a bounce waited for (`Shared::asked`).
    waited_for: u64,
}

impl<'a> PluginAudioProcessor<'a, Shared<'a>, MainThread<'a>> for Processor<'a> {
    fn activate(
        _host: HostAudioProcessorHandle<'a>,
        main_thread: &MainThread<'a>,
        shared: &'a Shared<'a>,
        config: PluginAudioConfiguration,
    ) -> Result<Self, PluginError> {
        if !(config.sample_rate.is_finite() && (1000.0..=1_536_000.0).contains(&config.sample_rate))
        {
            return Err(PluginError::Message("unsupported sample rate"));
        }
        let (takes_tx, takes_rx) = rtrb::RingBuffer::new(4);
        let (ret_tx, ret_rx) = rtrb::RingBuffer::new(8);
        let xfade = (XFADE_S * config.sample_rate) as usize;
        let player = Player::new(takes_rx, ret_tx, xfade);
        {
            let mut inner = main_thread.inner.lock();
            inner.sample_rate = Some(config.sample_rate);
            inner.link = Some(Link {
                takes: takes_tx,
                returned: ret_rx,
            });
            main_thread.request(&mut inner);
        }
        Ok(Self {
            shared,
            player,
            sample_rate: config.sample_rate,
            gain: db_to_gain(shared.params.get(ParamId::Gain)),
            free_running: 0,
            tempo_watch: TempoWatch::default(),
            pace: Pace::default(),
            waited_for: shared.asked.load(Ordering::Acquire),
        })
    }

    fn process(
        &mut self,
        process: Process,
        mut audio: Audio,
        events: Events,
    ) -> Result<ProcessStatus, PluginError> {
        if apply_param_events(self.shared, events.input, events.output) {
            self.shared.ask_for_music();
        }
        let frames = audio.frames_count() as usize;
        let (playing, start) = self.line_up(&process, frames);
        let target = db_to_gain(self.shared.params.get(ParamId::Gain));
        let Some(mut port) = audio.port_pair(0) else {
            return Ok(ProcessStatus::Continue);
        };
        let Some(channels) = port.channels()?.into_f32() else {
            return Ok(ProcessStatus::Continue);
        };
        let mut outs: [Option<&mut [f32]>; 2] = [None, None];
        for (i, pair) in channels.into_iter().enumerate().take(2) {
            outs[i] = match pair {
                ChannelPair::InputOnly(_) => None,
                ChannelPair::OutputOnly(buf) => {
                    buf.fill(0.0);
                    Some(buf)
                }
                ChannelPair::InputOutput(input, output) => {
                    output.copy_from_slice(input);
                    Some(output)
                }
                ChannelPair::InPlace(buf) => Some(buf),
            };
        }
        if let [Some(l), Some(r)] = outs
            && playing
        {
            self.play(start, target, l, r);
        }
        self.gain = target;
        self.free_running += frames as i64;
        self.pace.block_ends(Instant::now());
        Ok(ProcessStatus::Continue)
    }

    fn deactivate(self, main_thread: &MainThread<'a>) {
        let mut inner = main_thread.inner.lock();
        inner.link = None;
        inner.sample_rate = None;
        inner.has_music = false;
        // `self` (the player and its chunks) is dropped here, on the main
        // thread.
    }
}

impl Processor<'_> {
    /// Everything before the block's samples: the takes that came in, the
    /// pace and the tempo heard, where the piece is and the next bar line
    /// (where new music comes in), and in a bounce the waits for the music
    /// it needs. Returns whether the music sounds, and the piece frame at
    /// the block's start.
    fn line_up(&mut self, process: &Process, frames: usize) -> (bool, i64) {
        self.player.poll();
        let fast = self
            .pace
            .block_starts(Instant::now(), frames, self.sample_rate);
        self.shared.bouncing.store(fast, Ordering::Release);
        let (playing, start) = transport::position(
            process.transport,
            self.shared.offset(),
            self.sample_rate,
            self.free_running,
        );
        self.player.catch_up(start, frames);
        let editor = &self.shared.editor;
        editor.set_playhead(playing.then(|| start as f64 / self.sample_rate));
        editor.set_loop(transport::loop_range(
            process.transport,
            self.shared.offset(),
        ));
        self.follow_tempo(process, frames);
        let bar = transport::next_bar(process.transport, start, self.sample_rate);
        let bounce = playing && self.shared.bouncing();
        if bounce {
            self.wait_for_asked_music(bar);
        }
        self.player.schedule(bar);
        if bounce && self.player.has_take() {
            // A bounce must be complete, so wait (bounded) for the full
            // piece's music this block needs.
            self.player.wait_ready_offline(start, frames, OFFLINE_WAIT);
        }
        (playing, start)
    }

    /// Bounces only: when new music was asked for (a tempo or parameter
    /// change) and not yet waited for, waits (bounded) until its take is in
    /// and comes in at `bar`, so the bounce has the new music from that bar
    /// on, however long the engine takes.
    fn wait_for_asked_music(&mut self, bar: i64) {
        let ask = self.shared.asked.load(Ordering::Acquire);
        if ask <= self.waited_for {
            return;
        }
        self.waited_for = ask;
        let answered = &self.shared.answered;
        self.player.wait_for_take(ask, bar, OFFLINE_WAIT, || {
            answered.load(Ordering::Acquire) >= ask
        });
    }

    /// Adds the music from piece frame `start` into the block, the gain
    /// ramping from the last block's to `target` in steps of 32 frames.
    fn play(&mut self, start: i64, target: f32, l: &mut [f32], r: &mut [f32]) {
        let frames = l.len().min(r.len());
        let steps = frames.div_ceil(32).max(1);
        for s in 0..steps {
            let (a, b) = (s * 32, ((s + 1) * 32).min(frames));
            let g = self.gain + (target - self.gain) * (s + 1) as f32 / steps as f32;
            self.player
                .mix_into(start + a as i64, g, &mut l[a..b], &mut r[a..b]);
        }
    }

    /// Watches the host's tempo and time signature; once a new one has
    /// settled, publishes it (with where a bar starts) and asks for music
    /// on it.
    fn follow_tempo(&mut self, process: &Process, frames: usize) {
        if self.shared.params.get(ParamId::FollowTempo) < 0.5 {
            return;
        }
        let Some((grid, bar_song)) = process.transport.and_then(transport::host_grid) else {
            return;
        };
        let playing = self.player.newest_grid();
        if self
            .tempo_watch
            .hear(grid, frames, self.sample_rate, playing)
        {
            let s = self.shared;
            s.host_downbeat.store(bar_song.to_bits(), Ordering::Release);
            s.host_meter
                .store(pack_meter(grid.meter), Ordering::Release);
            s.host_tempo.store(grid.bpm.to_bits(), Ordering::Release);
            s.ask_for_music();
        }
    }
}

impl PluginAudioProcessorParams for Processor<'_> {
    fn flush(&mut self, input: &InputEvents, output: &mut OutputEvents) {
        if apply_param_events(self.shared, input, output) {
            self.shared.ask_for_music();
        }
    }
}

fn db_to_gain(db: f64) -> f32 {
    10f64.powf(db / 20.0) as f32
}
