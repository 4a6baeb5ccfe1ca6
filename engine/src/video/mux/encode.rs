//! The stereo sound encoder both writers use: the muxer for the music and
//! the mix (AAC), and the synthetic videos for their sound (AAC or 16-bit
//! PCM), so that the encoding settings live in one place.

use ffmpeg_next as ff;

use crate::audio::Audio;

/// One stereo sound stream of a file being written, with its encoder: AAC
/// for the music and the mix, and for the synthetic videos' sound, which
/// can also be 16-bit PCM.
pub(in crate::video) struct SoundEncoder {
    enc: ff::encoder::Audio,
    index: usize,
    rate: u32,
    format: ff::format::Sample,
}

impl SoundEncoder {
    /// Adds the stream (before the header is written): `codec` at `rate`,
    /// `bit_rate` where the codec has one, with `title` in its metadata.
    pub(in crate::video) fn add(
        octx: &mut ff::format::context::Output,
        codec: ff::codec::Id,
        rate: u32,
        bit_rate: usize,
        title: Option<&str>,
    ) -> std::result::Result<Self, ff::Error> {
        let encoder = ff::encoder::find(codec).ok_or(ff::Error::EncoderNotFound)?;
        let format = if codec == ff::codec::Id::AAC {
            ff::format::Sample::F32(ff::format::sample::Type::Planar)
        } else {
            ff::format::Sample::I16(ff::format::sample::Type::Packed)
        };
        let global_header = octx
            .format()
            .flags()
            .contains(ff::format::Flags::GLOBAL_HEADER);
        let mut enc = ff::codec::context::Context::new_with_codec(encoder)
            .encoder()
            .audio()?;
        let tb = ff::Rational(1, rate as i32);
        enc.set_rate(rate as i32);
        enc.set_channel_layout(ff::ChannelLayout::STEREO);
        enc.set_format(format);
        enc.set_bit_rate(bit_rate);
        enc.set_time_base(tb);
        if global_header {
            enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        let enc = enc.open_as(encoder)?;
        let mut ost = octx.add_stream(encoder)?;
        ost.set_parameters(&enc);
        ost.set_time_base(tb);
        if let Some(title) = title {
            let mut meta = ff::Dictionary::new();
            meta.set("title", title);
            meta.set("handler_name", title);
            ost.set_metadata(meta);
        }
        Ok(Self {
            enc,
            index: ost.index(),
            rate,
            format,
        })
    }

    /// Samples per channel of each frame the encoder takes (only the last
    /// may be shorter).
    pub(in crate::video) fn frame_size(&self) -> usize {
        match self.enc.frame_size() {
            // PCM takes frames of any size.
            0 => 1024,
            n => n as usize,
        }
    }

    /// Encodes `n` samples per channel from sample time `pts` and writes
    /// what comes out; `fill(ch, buf)` puts channel `ch`'s samples in `buf`.
    pub(in crate::video) fn send(
        &mut self,
        octx: &mut ff::format::context::Output,
        pts: i64,
        n: usize,
        mut fill: impl FnMut(usize, &mut [f32]),
    ) -> std::result::Result<(), ff::Error> {
        let mut frame = ff::frame::Audio::new(self.format, n, ff::ChannelLayout::STEREO);
        frame.set_rate(self.rate);
        if self.format.is_planar() {
            for ch in 0..2 {
                fill(ch, &mut frame.plane_mut::<f32>(ch)[..n]);
            }
        } else {
            // 16-bit, the channels interleaved.
            let mut buf = vec![0.0f32; n];
            for ch in 0..2 {
                fill(ch, &mut buf);
                let data = frame.data_mut(0);
                for (i, x) in buf.iter().enumerate() {
                    let v = (x.clamp(-1.0, 1.0) * 32767.0).round() as i16;
                    let o = (2 * i + ch) * 2;
                    data[o..o + 2].copy_from_slice(&v.to_ne_bytes());
                }
            }
        }
        frame.set_pts(Some(pts));
        self.enc.send_frame(&frame)?;
        self.drain(octx)
    }

    /// Encodes `audio` (stereo) from sample time `start`, and ends the
    /// stream.
    pub(super) fn write_all(
        &mut self,
        octx: &mut ff::format::context::Output,
        audio: &Audio,
        start: i64,
    ) -> std::result::Result<(), ff::Error> {
        let size = self.frame_size();
        let last = audio.channels.len().saturating_sub(1);
        let mut pos = 0;
        while pos < audio.len() {
            let n = size.min(audio.len() - pos);
            self.send(octx, start + pos as i64, n, |ch, buf| {
                buf.copy_from_slice(&audio.channels[ch.min(last)][pos..pos + n]);
            })?;
            pos += n;
        }
        self.finish(octx)
    }

    /// Ends the stream: writes what the encoder still holds.
    pub(in crate::video) fn finish(
        &mut self,
        octx: &mut ff::format::context::Output,
    ) -> std::result::Result<(), ff::Error> {
        self.enc.send_eof()?;
        self.drain(octx)
    }

    fn drain(
        &mut self,
        octx: &mut ff::format::context::Output,
    ) -> std::result::Result<(), ff::Error> {
        let tb = ff::Rational(1, self.rate as i32);
        let ost_tb = octx.stream(self.index).map_or(tb, |s| s.time_base());
        let mut packet = ff::Packet::empty();
        while self.enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.index);
            packet.rescale_ts(tb, ost_tb);
            packet.write_interleaved(octx)?;
        }
        Ok(())
    }
}
