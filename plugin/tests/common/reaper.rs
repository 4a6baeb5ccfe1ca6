//! A fake REAPER: the API table `cockos.reaper_extension` hands to CLAP
//! plugins, over a project held in a static that tests edit. Media items,
//! takes and sources are encoded as small tagged integers, never
//! dereferenced.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use clack_host::extensions::prelude::*;
use vidmusician_plugin::reaper::{ReaperExtension, ReaperPluginInfo};

use super::TestHost;

#[derive(Clone, Debug)]
pub struct FakeItem {
    pub source_type: &'static str,
    pub path: String,
    pub position: f64,
    pub length: f64,
    pub start_offset: f64,
    pub playrate: f64,
    pub muted: bool,
}

static PROJECT: Mutex<Vec<FakeItem>> = Mutex::new(Vec::new());
/// Markers `(position, None)` and regions `(start, Some(end))`.
static MARKERS: Mutex<Vec<(f64, Option<f64>)>> = Mutex::new(Vec::new());
static CHANGES: AtomicI32 = AtomicI32::new(0);
const PROJECT_PTR: usize = 0x5000;

/// Replaces the project's items, as an edit in REAPER would (its change
/// count moves on).
pub fn set_project(items: Vec<FakeItem>) {
    *PROJECT.lock().unwrap() = items;
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

/// Replaces the project's markers and regions, as an edit in REAPER would.
pub fn set_markers(markers: Vec<(f64, Option<f64>)>) {
    *MARKERS.lock().unwrap() = markers;
    CHANGES.fetch_add(1, Ordering::AcqRel);
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn enum_markers(
    project: *mut c_void,
    index: c_int,
    region: *mut bool,
    position: *mut f64,
    end: *mut f64,
    _name: *mut *const c_char,
    _number: *mut c_int,
    _colour: *mut c_int,
) -> c_int {
    assert_eq!(project as usize, PROJECT_PTR);
    let markers = MARKERS.lock().unwrap();
    let Some(&(pos, rgn)) = usize::try_from(index).ok().and_then(|i| markers.get(i)) else {
        return 0;
    };
    // SAFETY: the plugin passes pointers to its own locals.
    unsafe {
        *region = rgn.is_some();
        *position = pos;
        *end = rgn.unwrap_or(0.0);
    }
    index + 1
}

fn encode(index: usize, tag: usize) -> *mut c_void {
    (((index + 1) << 4) | tag) as *mut c_void
}

fn decode(p: *mut c_void, tag: usize) -> Option<FakeItem> {
    let v = p as usize;
    if v & 0xf != tag || v >> 4 == 0 {
        return None;
    }
    PROJECT.lock().unwrap().get((v >> 4) - 1).cloned()
}

unsafe fn write(text: &str, buf: *mut c_char, size: c_int) {
    let n = text.len().min(size.max(1) as usize - 1);
    // SAFETY: the caller's buffer holds `size` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

unsafe extern "C" fn context(_host: *const clap_host, sel: c_int) -> *mut c_void {
    if sel == 3 {
        PROJECT_PTR as *mut c_void
    } else {
        std::ptr::null_mut()
    }
}

unsafe extern "C" fn count_items(project: *mut c_void) -> c_int {
    assert_eq!(project as usize, PROJECT_PTR);
    PROJECT.lock().unwrap().len() as c_int
}

unsafe extern "C" fn get_item(_project: *mut c_void, i: c_int) -> *mut c_void {
    if i >= 0 && (i as usize) < PROJECT.lock().unwrap().len() {
        encode(i as usize, 1)
    } else {
        std::ptr::null_mut()
    }
}

unsafe extern "C" fn active_take(item: *mut c_void) -> *mut c_void {
    let v = item as usize;
    encode((v >> 4) - 1, 2)
}

unsafe extern "C" fn take_source(take: *mut c_void) -> *mut c_void {
    let v = take as usize;
    encode((v >> 4) - 1, 3)
}

unsafe extern "C" fn source_parent(_source: *mut c_void) -> *mut c_void {
    std::ptr::null_mut()
}

unsafe extern "C" fn source_type(source: *mut c_void, buf: *mut c_char, size: c_int) {
    let t = decode(source, 3).map_or("", |i| i.source_type);
    // SAFETY: REAPER's contract, upheld by the plugin.
    unsafe { write(t, buf, size) }
}

unsafe extern "C" fn source_file(source: *mut c_void, buf: *mut c_char, size: c_int) {
    let p = decode(source, 3).map(|i| i.path).unwrap_or_default();
    // SAFETY: as above.
    unsafe { write(&p, buf, size) }
}

unsafe extern "C" fn item_value(item: *mut c_void, name: *const c_char) -> f64 {
    let Some(i) = decode(item, 1) else {
        return 0.0;
    };
    // SAFETY: the plugin passes NUL-terminated names.
    match unsafe { CStr::from_ptr(name) }.to_str().unwrap() {
        "D_POSITION" => i.position,
        "D_LENGTH" => i.length,
        "B_MUTE" => f64::from(u8::from(i.muted)),
        other => panic!("unexpected item value {other}"),
    }
}

unsafe extern "C" fn take_value(take: *mut c_void, name: *const c_char) -> f64 {
    let Some(i) = decode(take, 2) else {
        return 0.0;
    };
    // SAFETY: as above.
    match unsafe { CStr::from_ptr(name) }.to_str().unwrap() {
        "D_STARTOFFS" => i.start_offset,
        "D_PLAYRATE" => i.playrate,
        other => panic!("unexpected take value {other}"),
    }
}

unsafe extern "C" fn change_count(_project: *mut c_void) -> c_int {
    CHANGES.load(Ordering::Acquire)
}

unsafe extern "C" fn get_func(name: *const c_char) -> *mut c_void {
    // SAFETY: the plugin passes NUL-terminated names.
    let name = unsafe { CStr::from_ptr(name) }.to_str().unwrap();
    let f: *const () = match name {
        "clap_get_reaper_context" => context as *const (),
        "CountMediaItems" => count_items as *const (),
        "GetMediaItem" => get_item as *const (),
        "GetActiveTake" => active_take as *const (),
        "GetMediaItemTake_Source" => take_source as *const (),
        "GetMediaSourceParent" => source_parent as *const (),
        "GetMediaSourceType" => source_type as *const (),
        "GetMediaSourceFileName" => source_file as *const (),
        "GetMediaItemInfo_Value" => item_value as *const (),
        "GetMediaItemTakeInfo_Value" => take_value as *const (),
        "GetProjectStateChangeCount" => change_count as *const (),
        "EnumProjectMarkers3" => enum_markers as *const (),
        _ => std::ptr::null(),
    };
    f as *mut c_void
}

static INFO: ReaperPluginInfo = ReaperPluginInfo {
    caller_version: 0x20e,
    hwnd_main: std::ptr::null_mut(),
    register: None,
    get_func: Some(get_func),
};

// SAFETY: INFO is a `reaper_plugin_info_t`, the extension's struct.
unsafe impl ExtensionImplementation<TestHost> for ReaperExtension {
    const IMPLEMENTATION: RawExtensionImplementation = RawExtensionImplementation::new(&INFO);
}
