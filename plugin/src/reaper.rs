//! REAPER: the video on the project's timeline, found through the host
//! extension `cockos.reaper_extension` (REAPER's `reaper_plugin.h`), so the
//! plugin scores it with no user action.
//!
//! The extension is REAPER's API table. Its `clap_get_reaper_context` gives
//! the plugin instance's project; the project's media items are then read
//! with the same functions ReaScripts use. Everything here runs on the main
//! thread, as REAPER's API requires. What REAPER answers is turned into
//! [`Candidate`]s, and the choice among them ([`choose`]) is plain Rust, tested
//! on its own.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;

use clack_plugin::extensions::prelude::*;
use clack_plugin::host::HostMainThreadHandle;

/// REAPER's `reaper_plugin_info_t`: what `cockos.reaper_extension` points to.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReaperPluginInfo {
    pub caller_version: c_int,
    pub hwnd_main: *mut c_void,
    pub register: Option<unsafe extern "C" fn(name: *const c_char, info: *mut c_void) -> c_int>,
    pub get_func: Option<unsafe extern "C" fn(name: *const c_char) -> *mut c_void>,
}

// SAFETY: a table of function pointers the host keeps for the plugin's
// lifetime; it is only read.
unsafe impl Sync for ReaperPluginInfo {}
// SAFETY: as above.
unsafe impl Send for ReaperPluginInfo {}

/// The `cockos.reaper_extension` host extension.
#[derive(Copy, Clone)]
pub struct ReaperExtension(RawExtension<HostExtensionSide, ReaperPluginInfo>);

// SAFETY: the identifier is REAPER's, and it points to a
// `reaper_plugin_info_t`.
unsafe impl Extension for ReaperExtension {
    const IDENTIFIERS: &'static [&'static CStr] = &[c"cockos.reaper_extension"];
    type ExtensionSide = HostExtensionSide;

    unsafe fn from_raw(raw: RawExtension<Self::ExtensionSide>) -> Self {
        // SAFETY: the caller guarantees the pointer matches the identifier.
        Self(unsafe { raw.cast() })
    }
}

/// The video item the music is for, as the timeline plays it.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoItem {
    pub path: PathBuf,
    /// Project time where the item starts, seconds.
    pub position: f64,
    /// Length on the timeline, seconds.
    pub length: f64,
    /// Time of the video at the item's start, seconds.
    pub start_offset: f64,
    /// How fast the video plays (1 = as recorded).
    pub playrate: f64,
}

impl VideoItem {
    /// The part of the video the item plays, seconds of the video.
    pub fn range(&self) -> (f64, f64) {
        (
            self.start_offset,
            self.start_offset + self.length * self.playrate,
        )
    }

    /// Whether the music has to be made again to follow a move from `self`
    /// to `other` (not so for a move along the timeline).
    pub fn needs_new_music(&self, other: &VideoItem) -> bool {
        self.path != other.path || self.range() != other.range() || self.playrate != other.playrate
    }
}

/// Timeline times (markers, region bounds) that fall inside `item`, as
/// times of its video, sorted: the cuts of the user's edit that the music
/// should mark. Times at the item's very ends are its edges, not cuts.
pub fn cuts_in_video(item: &VideoItem, timeline: &[f64]) -> Vec<f64> {
    let (from, to) = item.range();
    let mut cuts: Vec<f64> = timeline
        .iter()
        .map(|&t| item.start_offset + (t - item.position) * item.playrate)
        .filter(|v| v.is_finite() && *v > from + 1e-3 && *v < to - 1e-3)
        .collect();
    cuts.sort_by(f64::total_cmp);
    cuts.dedup_by(|a, b| (*a - *b).abs() < 1e-3);
    cuts
}

/// One media item as REAPER describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The source's type: "VIDEO" for a video file.
    pub source_type: String,
    pub path: String,
    pub position: f64,
    pub length: f64,
    pub start_offset: f64,
    pub playrate: f64,
    pub muted: bool,
}

/// The video the music is for: the first unmuted video item on the
/// timeline (the earliest; the longest of those starting together). Items
/// whose numbers make no sense are skipped. Also says how many other video
/// items there were, so the choice can be reported.
pub fn choose(items: &[Candidate]) -> (Option<VideoItem>, usize) {
    let mut videos: Vec<VideoItem> = items
        .iter()
        .filter(|c| c.source_type.eq_ignore_ascii_case("VIDEO") && !c.muted)
        .filter(|c| !c.path.is_empty())
        .filter(|c| {
            c.position.is_finite()
                && c.length.is_finite()
                && c.length > 0.0
                && c.start_offset.is_finite()
                && c.playrate.is_finite()
                && c.playrate > 0.0
        })
        .map(|c| VideoItem {
            path: PathBuf::from(&c.path),
            position: c.position,
            length: c.length,
            // REAPER allows a negative offset (silence before the source);
            // the music starts with the picture.
            start_offset: c.start_offset.max(0.0),
            playrate: c.playrate,
        })
        .collect();
    videos.sort_by(|a, b| {
        a.position
            .total_cmp(&b.position)
            .then(b.length.total_cmp(&a.length))
    });
    let others = videos.len().saturating_sub(1);
    (videos.into_iter().next(), others)
}

type ContextFn = unsafe extern "C" fn(*const clap_sys::host::clap_host, c_int) -> *mut c_void;
type CountFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type IndexFn = unsafe extern "C" fn(*mut c_void, c_int) -> *mut c_void;
type PtrFn = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
type TextFn = unsafe extern "C" fn(*mut c_void, *mut c_char, c_int);
type ValueFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> f64;

/// `clap_get_reaper_context`'s selector for the instance's project.
const CONTEXT_PROJECT: c_int = 3;
/// Longest path read back from REAPER.
const PATH_BYTES: usize = 4096;

/// REAPER's functions this plugin uses, looked up once.
pub struct Reaper {
    host: *const clap_sys::host::clap_host,
    context: ContextFn,
    count_items: CountFn,
    item: IndexFn,
    active_take: PtrFn,
    take_source: PtrFn,
    source_parent: Option<PtrFn>,
    source_type: TextFn,
    source_file: TextFn,
    item_value: ValueFn,
    take_value: ValueFn,
    change_count: Option<CountFn>,
    markers: Option<MarkersFn>,
}

/// `EnumProjectMarkers3(project, index, &is_region, &position, &region_end,
/// &name, &number, &colour)`: the next index, 0 after the last.
type MarkersFn = unsafe extern "C" fn(
    *mut c_void,
    c_int,
    *mut bool,
    *mut f64,
    *mut f64,
    *mut *const c_char,
    *mut c_int,
    *mut c_int,
) -> c_int;

/// The most markers read from a project (a guard against a host that never
/// says the list has ended).
const MAX_MARKERS: usize = 10_000;

impl Reaper {
    /// REAPER's API, when the host is REAPER and has every function needed.
    pub fn new(host: &HostMainThreadHandle<'_>) -> Option<Self> {
        let ext = host.get_extension::<ReaperExtension>()?;
        let info = host.use_extension(&ext.0);
        let get = info.get_func?;
        let func = |name: &CStr| -> Option<*mut c_void> {
            // SAFETY: REAPER's lookup by name; null when it has no such function.
            let p = unsafe { get(name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        // SAFETY (all transmutes): each name's signature is REAPER's, as
        // declared in reaper_plugin_functions.h.
        unsafe {
            Some(Self {
                host: host.as_raw(),
                context: std::mem::transmute::<*mut c_void, ContextFn>(func(
                    c"clap_get_reaper_context",
                )?),
                count_items: std::mem::transmute::<*mut c_void, CountFn>(func(c"CountMediaItems")?),
                item: std::mem::transmute::<*mut c_void, IndexFn>(func(c"GetMediaItem")?),
                active_take: std::mem::transmute::<*mut c_void, PtrFn>(func(c"GetActiveTake")?),
                take_source: std::mem::transmute::<*mut c_void, PtrFn>(func(
                    c"GetMediaItemTake_Source",
                )?),
                source_parent: func(c"GetMediaSourceParent")
                    .map(|p| std::mem::transmute::<*mut c_void, PtrFn>(p)),
                source_type: std::mem::transmute::<*mut c_void, TextFn>(func(
                    c"GetMediaSourceType",
                )?),
                source_file: std::mem::transmute::<*mut c_void, TextFn>(func(
                    c"GetMediaSourceFileName",
                )?),
                item_value: std::mem::transmute::<*mut c_void, ValueFn>(func(
                    c"GetMediaItemInfo_Value",
                )?),
                take_value: std::mem::transmute::<*mut c_void, ValueFn>(func(
                    c"GetMediaItemTakeInfo_Value",
                )?),
                change_count: func(c"GetProjectStateChangeCount")
                    .map(|p| std::mem::transmute::<*mut c_void, CountFn>(p)),
                markers: func(c"EnumProjectMarkers3")
                    .map(|p| std::mem::transmute::<*mut c_void, MarkersFn>(p)),
            })
        }
    }

    fn project(&self) -> Option<*mut c_void> {
        // SAFETY: REAPER's function, called with its own host pointer on the
        // main thread.
        let p = unsafe { (self.context)(self.host, CONTEXT_PROJECT) };
        (!p.is_null()).then_some(p)
    }

    /// A number that changes whenever the project does (undo points, item
    /// moves), when REAPER offers one.
    pub fn change_count(&self) -> Option<i32> {
        let project = self.project()?;
        // SAFETY: REAPER's function on its own project pointer.
        self.change_count.map(|f| unsafe { f(project) })
    }

    /// Every media item of the instance's project, as REAPER describes it.
    pub fn items(&self) -> Vec<Candidate> {
        let Some(project) = self.project() else {
            return Vec::new();
        };
        // SAFETY (this block): REAPER's functions, each given a pointer that
        // REAPER itself returned just before, on the main thread, where the
        // project cannot change under us; null answers are checked.
        unsafe {
            let n = (self.count_items)(project).clamp(0, 100_000);
            let mut out = Vec::with_capacity(n as usize);
            for i in 0..n {
                let item = (self.item)(project, i);
                if item.is_null() {
                    continue;
                }
                let take = (self.active_take)(item);
                if take.is_null() {
                    continue;
                }
                let mut source = (self.take_source)(take);
                if source.is_null() {
                    continue;
                }
                // Sections and reversed sources wrap the file's source.
                let mut source_type = self.text(self.source_type, source);
                if let Some(parent) = self.source_parent {
                    for _ in 0..8 {
                        if source_type.eq_ignore_ascii_case("VIDEO") {
                            break;
                        }
                        let p = parent(source);
                        if p.is_null() {
                            break;
                        }
                        source = p;
                        source_type = self.text(self.source_type, source);
                    }
                }
                out.push(Candidate {
                    path: self.text(self.source_file, source),
                    source_type,
                    position: (self.item_value)(item, c"D_POSITION".as_ptr()),
                    length: (self.item_value)(item, c"D_LENGTH".as_ptr()),
                    muted: (self.item_value)(item, c"B_MUTE".as_ptr()) >= 0.5,
                    start_offset: (self.take_value)(take, c"D_STARTOFFS".as_ptr()),
                    playrate: (self.take_value)(take, c"D_PLAYRATE".as_ptr()),
                });
            }
            out
        }
    }

    /// The project's markers and the starts and ends of its regions,
    /// seconds of the project's timeline.
    pub fn marker_times(&self) -> Vec<f64> {
        let (Some(project), Some(f)) = (self.project(), self.markers) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut index = 0;
        for _ in 0..MAX_MARKERS {
            let (mut region, mut pos, mut end) = (false, f64::NAN, f64::NAN);
            let (mut name, mut number, mut colour) = (std::ptr::null(), 0, 0);
            // SAFETY: REAPER's function on its own project pointer, on the
            // main thread; every out-pointer is to a local of its type.
            let next = unsafe {
                f(
                    project,
                    index,
                    &mut region,
                    &mut pos,
                    &mut end,
                    &mut name,
                    &mut number,
                    &mut colour,
                )
            };
            if next <= index {
                break;
            }
            index = next;
            out.push(pos);
            if region {
                out.push(end);
            }
        }
        out.retain(|t| t.is_finite());
        out
    }

    /// A string REAPER writes into a buffer.
    ///
    /// # Safety
    /// `f` must be REAPER's and `source` a source REAPER returned.
    unsafe fn text(&self, f: TextFn, source: *mut c_void) -> String {
        let mut buf = vec![0u8; PATH_BYTES];
        // SAFETY: the buffer is as long as we say; REAPER writes a
        // NUL-terminated string into it.
        unsafe { f(source, buf.as_mut_ptr().cast(), PATH_BYTES as c_int) };
        // A host that fills the buffer without a terminator still ends here.
        buf[PATH_BYTES - 1] = 0;
        CStr::from_bytes_until_nul(&buf)
            .ok()
            .and_then(|c| c.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(position: f64, length: f64) -> Candidate {
        Candidate {
            source_type: "VIDEO".into(),
            path: format!("/v/{position}.mp4"),
            position,
            length,
            start_offset: 0.0,
            playrate: 1.0,
            muted: false,
        }
    }

    #[test]
    fn markers_inside_the_item_become_cuts_of_its_video() {
        // 4 s of the video from its 1 s mark, played at 2×, at 10 s on the
        // timeline: timeline 10–12 s is video 1–5 s.
        let item = VideoItem {
            path: PathBuf::from("v.mp4"),
            position: 10.0,
            length: 2.0,
            start_offset: 1.0,
            playrate: 2.0,
        };
        let cuts = cuts_in_video(
            &item,
            &[11.5, 3.0, 10.25, 10.0, 12.0, 13.0, f64::NAN, 10.25],
        );
        assert_eq!(cuts, vec![1.5, 4.0]);
    }

    #[test]
    fn the_first_unmuted_video_is_chosen() {
        let audio = Candidate {
            source_type: "WAVE".into(),
            ..video(0.0, 10.0)
        };
        let muted = Candidate {
            muted: true,
            ..video(0.5, 10.0)
        };
        let (item, others) = choose(&[audio.clone(), video(8.0, 3.0), muted, video(2.0, 4.0)]);
        let item = item.unwrap();
        assert_eq!(item.position, 2.0);
        assert_eq!(others, 1);
        assert_eq!(choose(&[audio]), (None, 0));
        // Two at once: the longer.
        let (item, _) = choose(&[video(1.0, 2.0), video(1.0, 5.0)]);
        assert_eq!(item.unwrap().length, 5.0);
    }

    #[test]
    fn nonsense_from_the_host_is_skipped() {
        let bad = [
            Candidate {
                playrate: 0.0,
                ..video(0.0, 1.0)
            },
            Candidate {
                length: f64::NAN,
                ..video(0.0, 1.0)
            },
            Candidate {
                path: String::new(),
                ..video(0.0, 1.0)
            },
            video(f64::INFINITY, 1.0),
            video(0.0, -1.0),
        ];
        assert_eq!(choose(&bad), (None, 0));
        let early = Candidate {
            start_offset: -2.0,
            ..video(0.0, 1.0)
        };
        assert_eq!(choose(&[early]).0.unwrap().start_offset, 0.0);
    }

    #[test]
    fn only_moves_along_the_timeline_keep_the_music() {
        let a = choose(&[Candidate {
            start_offset: 1.0,
            playrate: 2.0,
            ..video(3.0, 4.0)
        }])
        .0
        .unwrap();
        assert_eq!(a.range(), (1.0, 9.0));
        let moved = VideoItem {
            position: 7.0,
            ..a.clone()
        };
        assert!(!a.needs_new_music(&moved));
        let trimmed = VideoItem {
            length: 3.0,
            ..a.clone()
        };
        assert!(a.needs_new_music(&trimmed));
        let faster = VideoItem {
            playrate: 1.0,
            length: 8.0,
            ..a.clone()
        };
        assert!(a.needs_new_music(&faster));
    }
}
