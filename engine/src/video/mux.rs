//! A copy of a video with music as its audio track: the video stream is
//! copied packet for packet (not re-encoded), the music is encoded to AAC.

use std::path::Path;

use ffmpeg_next as ff;

use super::probe::{info_from, open_input};
use crate::audio::{Audio, atomic_output};
use crate::error::{Error, Result};

/// Writes `out`: `video`'s picture with `music` as its only audio track.
/// The music is cut to the video's length. `out` is replaced atomically, so
/// a failure never leaves a half-written file in its place.
pub fn mux_audio(video: &Path, music: &Audio, out: &Path) -> Result<()> {
    let mut ictx = open_input(video)?;
    let info = info_from(video, &ictx)?;
    atomic_output(out, |tmp| {
        write_mux(&mut ictx, info.stream_index, info.duration, music, tmp, out)
    })
}

fn write_mux(
    ictx: &mut ff::format::context::Input,
    vindex: usize,
    duration: f64,
    music: &Audio,
    tmp: &Path,
    out: &Path,
) -> Result<()> {
    let err = |e: ff::Error| Error::output(out, e);
    let format_name = ff::format::output(&out)
        .map(|o| o.format().name().to_string())
        .map_err(|e| Error::output(out, format!("unknown container for this extension ({e})")))?;
    let mut octx = ff::format::output_as(&tmp, &format_name).map_err(err)?;
    let ist_tb = ictx
        .stream(vindex)
        .ok_or_else(|| Error::NoVideoStream(out.to_path_buf()))?
        .time_base();
    {
        let ist = ictx
            .stream(vindex)
            .ok_or_else(|| Error::NoVideoStream(out.to_path_buf()))?;
        let mut ost = octx
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(err)?;
        ost.set_parameters(ist.parameters());
        // SAFETY: plain field write on the stream's own parameters; a zero tag
        // lets the muxer choose the tag its container uses.
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
    }

    let codec = ff::encoder::find(ff::codec::Id::AAC)
        .ok_or_else(|| Error::output(out, "this FFmpeg has no AAC encoder"))?;
    let global_header = octx
        .format()
        .flags()
        .contains(ff::format::Flags::GLOBAL_HEADER);
    let mut enc = ff::codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(err)?;
    let rate = music.sample_rate as i32;
    enc.set_rate(rate);
    enc.set_channel_layout(ff::ChannelLayout::STEREO);
    enc.set_format(ff::format::Sample::F32(ff::format::sample::Type::Planar));
    enc.set_bit_rate(192_000);
    enc.set_time_base(ff::Rational(1, rate));
    if global_header {
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
    }
    let mut enc = enc.open_as(codec).map_err(err)?;
    let aindex = {
        let mut ost = octx.add_stream(codec).map_err(err)?;
        ost.set_parameters(&enc);
        ost.set_time_base(ff::Rational(1, rate));
        ost.index()
    };
    octx.write_header().map_err(err)?;
    let vost_tb = octx.stream(0).map(|s| s.time_base()).unwrap_or(ist_tb);
    let aost_tb = octx
        .stream(aindex)
        .map(|s| s.time_base())
        .unwrap_or(ff::Rational(1, rate));

    // Audio first: the muxer interleaves by timestamp.
    let total = music
        .len()
        .min((duration * f64::from(rate)).round() as usize);
    let frame_size = (enc.frame_size() as usize).max(1);
    let mut frame = ff::frame::Audio::new(
        ff::format::Sample::F32(ff::format::sample::Type::Planar),
        frame_size,
        ff::ChannelLayout::STEREO,
    );
    frame.set_rate(rate as u32);
    let mut packet = ff::Packet::empty();
    let mut pos = 0;
    while pos < total {
        let n = frame_size.min(total - pos);
        if n < frame_size {
            frame = ff::frame::Audio::new(
                ff::format::Sample::F32(ff::format::sample::Type::Planar),
                n,
                ff::ChannelLayout::STEREO,
            );
            frame.set_rate(rate as u32);
        }
        for ch in 0..2 {
            let src = &music.channels[ch.min(music.channels.len() - 1)][pos..pos + n];
            frame.plane_mut::<f32>(ch)[..n].copy_from_slice(src);
        }
        frame.set_pts(Some(pos as i64));
        enc.send_frame(&frame).map_err(err)?;
        drain_audio(&mut enc, &mut octx, &mut packet, aindex, rate, aost_tb).map_err(err)?;
        pos += n;
    }
    enc.send_eof().map_err(err)?;
    drain_audio(&mut enc, &mut octx, &mut packet, aindex, rate, aost_tb).map_err(err)?;

    for (stream, mut p) in ictx.packets() {
        if stream.index() != vindex {
            continue;
        }
        p.rescale_ts(ist_tb, vost_tb);
        p.set_position(-1);
        p.set_stream(0);
        p.write_interleaved(&mut octx).map_err(err)?;
    }
    octx.write_trailer().map_err(err)?;
    Ok(())
}

fn drain_audio(
    enc: &mut ff::encoder::Audio,
    octx: &mut ff::format::context::Output,
    packet: &mut ff::Packet,
    index: usize,
    rate: i32,
    ost_tb: ff::Rational,
) -> std::result::Result<(), ff::Error> {
    while enc.receive_packet(packet).is_ok() {
        packet.set_stream(index);
        packet.rescale_ts(ff::Rational(1, rate), ost_tb);
        packet.write_interleaved(octx)?;
    }
    Ok(())
}
