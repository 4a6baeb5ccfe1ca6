//! The VST3 build hosted through the `vst3` crate's bindings, as a VST3 host
//! does it: module entry, factory, component with a real
//! `IHostApplication`, a component handler on its edit controller, audio
//! processor, offline processing, state through an `IBStream`.

// The bindings keep the VST3 SDK's names (kIBSeekSet, getState, …).
#![allow(non_snake_case, non_upper_case_globals)]

#[path = "../plugin/tests/common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::ffi::c_void;

use common::*;
use vst3::Steinberg::Vst::{
    AudioBusBuffers, AudioBusBuffers__type0, BusDirections_, IAudioProcessor, IAudioProcessorTrait,
    IComponent, IComponentHandler, IComponentHandlerTrait, IComponentTrait, IEditController,
    IEditControllerTrait, IHostApplication, IHostApplicationTrait, MediaTypes_, ParamID,
    ParamValue, ProcessContext, ProcessContext_, ProcessData, ProcessModes_, ProcessSetup,
    RestartFlags_, String128, SymbolicSampleSizes_,
};
use vst3::Steinberg::{
    FUnknown, IBStream, IBStream_, IBStreamTrait, IPlugViewTrait, IPluginBaseTrait, IPluginFactory,
    IPluginFactoryTrait, PClassInfo, TUID, ViewRect, int32, int64, kInvalidArgument,
    kNotImplemented, kPlatformTypeX11EmbedWindowID, kResultOk, tresult,
};
use vst3::{Class, ComPtr, ComWrapper, Interface};

struct Host;

impl Class for Host {
    type Interfaces = (IHostApplication,);
}

impl IHostApplicationTrait for Host {
    unsafe fn getName(&self, name: *mut String128) -> tresult {
        let text: Vec<u16> = "VidMusician test host".encode_utf16().collect();
        // SAFETY: the caller passes a String128 (128 UTF-16 units).
        let dst = unsafe { &mut *name };
        for (d, s) in dst.iter_mut().zip(text.iter().chain(std::iter::once(&0))) {
            *d = *s as _;
        }
        kResultOk
    }

    unsafe fn createInstance(
        &self,
        _cid: *mut TUID,
        _iid: *mut TUID,
        obj: *mut *mut c_void,
    ) -> tresult {
        // SAFETY: the caller passes a valid out pointer.
        unsafe { *obj = std::ptr::null_mut() };
        kNotImplemented
    }
}

/// The host's side of parameter changes: it records the restarts the
/// plugin asks for.
#[derive(Default)]
struct Handler {
    restarts: RefCell<Vec<i32>>,
}

impl Class for Handler {
    type Interfaces = (IComponentHandler,);
}

impl IComponentHandlerTrait for Handler {
    unsafe fn beginEdit(&self, _id: ParamID) -> tresult {
        kResultOk
    }

    unsafe fn performEdit(&self, _id: ParamID, _value: ParamValue) -> tresult {
        kResultOk
    }

    unsafe fn endEdit(&self, _id: ParamID) -> tresult {
        kResultOk
    }

    unsafe fn restartComponent(&self, flags: int32) -> tresult {
        self.restarts.borrow_mut().push(flags);
        kResultOk
    }
}

/// An in-memory `IBStream` for state.
struct Stream {
    data: RefCell<Vec<u8>>,
    pos: RefCell<usize>,
}

impl Class for Stream {
    type Interfaces = (IBStream,);
}

impl IBStreamTrait for Stream {
    unsafe fn read(&self, buffer: *mut c_void, n: int32, read: *mut int32) -> tresult {
        let data = self.data.borrow();
        let mut pos = self.pos.borrow_mut();
        let count = (n.max(0) as usize).min(data.len() - *pos);
        // SAFETY: the caller's buffer holds `n` bytes; `count <= n`.
        unsafe { std::ptr::copy_nonoverlapping(data[*pos..].as_ptr(), buffer as *mut u8, count) };
        *pos += count;
        if !read.is_null() {
            // SAFETY: non-null out pointer from the caller.
            unsafe { *read = count as int32 };
        }
        kResultOk
    }

    unsafe fn write(&self, buffer: *mut c_void, n: int32, written: *mut int32) -> tresult {
        if n < 0 {
            return kInvalidArgument;
        }
        let mut data = self.data.borrow_mut();
        let mut pos = self.pos.borrow_mut();
        // SAFETY: the caller's buffer holds `n` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(buffer as *const u8, n as usize) };
        let end = *pos + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[*pos..end].copy_from_slice(bytes);
        *pos = end;
        if !written.is_null() {
            // SAFETY: non-null out pointer from the caller.
            unsafe { *written = n };
        }
        kResultOk
    }

    unsafe fn seek(&self, offset: int64, mode: int32, result: *mut int64) -> tresult {
        let len = self.data.borrow().len() as i64;
        let mut pos = self.pos.borrow_mut();
        use IBStream_::IStreamSeekMode_::{kIBSeekCur, kIBSeekEnd, kIBSeekSet};
        let base = match mode as u32 {
            kIBSeekSet => 0,
            kIBSeekCur => *pos as i64,
            kIBSeekEnd => len,
            _ => return kInvalidArgument,
        };
        *pos = (base + offset).clamp(0, len) as usize;
        if !result.is_null() {
            // SAFETY: non-null out pointer from the caller.
            unsafe { *result = *pos as int64 };
        }
        kResultOk
    }

    unsafe fn tell(&self, pos: *mut int64) -> tresult {
        // SAFETY: the caller passes a valid out pointer.
        unsafe { *pos = *self.pos.borrow() as int64 };
        kResultOk
    }
}

fn stream(data: Vec<u8>) -> ComWrapper<Stream> {
    ComWrapper::new(Stream {
        data: RefCell::new(data),
        pos: RefCell::new(0),
    })
}

struct Plugin {
    component: ComPtr<IComponent>,
    processor: ComPtr<IAudioProcessor>,
    handler: ComWrapper<Handler>,
}

/// Creates and initialises the audio module class of `factory`.
unsafe fn create(factory: &ComPtr<IPluginFactory>, host: &ComWrapper<Host>) -> Plugin {
    unsafe {
        let mut cid = None;
        for i in 0..factory.countClasses() {
            let mut info: PClassInfo = std::mem::zeroed();
            assert_eq!(factory.getClassInfo(i, &mut info), kResultOk);
            let category = std::ffi::CStr::from_ptr(info.category.as_ptr())
                .to_string_lossy()
                .into_owned();
            if category == "Audio Module Class" {
                cid = Some(info.cid);
            }
        }
        let cid = cid.expect("no audio module class in the factory");
        let mut obj: *mut c_void = std::ptr::null_mut();
        let r =
            factory.createInstance(cid.as_ptr(), IComponent::IID.as_ptr() as *const _, &mut obj);
        assert_eq!(r, kResultOk, "createInstance");
        let component = ComPtr::from_raw(obj as *mut IComponent).expect("null component");
        let context = host.as_com_ref::<FUnknown>().unwrap().as_ptr();
        assert_eq!(component.initialize(context), kResultOk, "initialize");
        let processor = component
            .cast::<IAudioProcessor>()
            .expect("no IAudioProcessor");
        // One object is component and controller (the wrapper's single
        // component effect); hosts give it their handler before any state.
        let controller = component
            .cast::<IEditController>()
            .expect("no IEditController");
        let handler = ComWrapper::new(Handler::default());
        let h = handler.as_com_ref::<IComponentHandler>().unwrap().as_ptr();
        assert_eq!(controller.setComponentHandler(h), kResultOk);
        Plugin {
            component,
            processor,
            handler,
        }
    }
}

/// Loads the module at `path` as a VST3 host does: its entry, then its
/// factory.
unsafe fn load(path: &std::path::Path) -> (libloading::Library, ComPtr<IPluginFactory>) {
    unsafe {
        let lib = libloading::Library::new(path).unwrap();
        let entry: libloading::Symbol<unsafe extern "C" fn(*mut c_void) -> bool> =
            lib.get(b"ModuleEntry\0").unwrap();
        assert!(entry(std::ptr::null_mut()), "ModuleEntry");
        let get_factory: libloading::Symbol<unsafe extern "system" fn() -> *mut IPluginFactory> =
            lib.get(b"GetPluginFactory\0").unwrap();
        let factory = ComPtr::from_raw(get_factory()).expect("no factory");
        (lib, factory)
    }
}

/// The module's exit, once every object of it is released.
unsafe fn unload(lib: libloading::Library) {
    unsafe {
        let exit: libloading::Symbol<unsafe extern "C" fn() -> bool> =
            lib.get(b"ModuleExit\0").unwrap();
        assert!(exit(), "ModuleExit");
    }
}

fn get_state(p: &Plugin) -> Vec<u8> {
    let s = stream(Vec::new());
    let ptr = s.as_com_ref::<IBStream>().unwrap().as_ptr();
    // SAFETY: a live stream object for the call's duration.
    assert_eq!(unsafe { p.component.getState(ptr) }, kResultOk, "getState");
    s.data.borrow().clone()
}

fn set_state(p: &Plugin, bytes: Vec<u8>) {
    let s = stream(bytes);
    let ptr = s.as_com_ref::<IBStream>().unwrap().as_ptr();
    // SAFETY: a live stream object for the call's duration.
    assert_eq!(unsafe { p.component.setState(ptr) }, kResultOk, "setState");
}

#[test]
fn the_vst3_build_plays_and_keeps_state_in_a_vst3_host() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, video) = fixture();
    // The music asked for on activation, before the host's tempo is known;
    // and, once the host's 120 BPM has held for 0.3 s, the music on it (no
    // bar positions from this host: bars from song time 0). Offline, the
    // plugin waits for that take and brings it in at once.
    let want = expected(video, 0, 48_000);
    let on_tempo = expected_with(video, 0, 48_000, Some(120.0), Some(0.0));
    let copy = dir.path().join("VidMusician.so");
    std::fs::copy(built_library(), &copy).unwrap();
    // SAFETY: set before the plugin reads it at instantiation; every test
    // of this binary sets the same value.
    unsafe { std::env::set_var("VIDMUSICIAN_VIDEO", video) };
    unsafe {
        let (lib, factory) = load(&copy);
        let host = ComWrapper::new(Host);
        let plugin = create(&factory, &host);

        let c = &plugin.component;
        assert_eq!(
            c.activateBus(MediaTypes_::kAudio as _, BusDirections_::kInput as _, 0, 1),
            kResultOk
        );
        assert_eq!(
            c.activateBus(MediaTypes_::kAudio as _, BusDirections_::kOutput as _, 0, 1),
            kResultOk
        );
        let mut setup = ProcessSetup {
            processMode: ProcessModes_::kOffline as _,
            symbolicSampleSize: SymbolicSampleSizes_::kSample32 as _,
            maxSamplesPerBlock: 512,
            sampleRate: 48_000.0,
        };
        assert_eq!(
            plugin.processor.setupProcessing(&mut setup),
            kResultOk,
            "setupProcessing"
        );
        assert_eq!(c.setActive(1), kResultOk, "setActive");
        assert_eq!(
            plugin.processor.setProcessing(1),
            kResultOk,
            "setProcessing"
        );

        let n = 512usize;
        let (mut il, mut ir, mut ol, mut or) =
            (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let mut in_ptrs = [il.as_mut_ptr(), ir.as_mut_ptr()];
        let mut out_ptrs = [ol.as_mut_ptr(), or.as_mut_ptr()];
        let mut inputs = AudioBusBuffers {
            numChannels: 2,
            silenceFlags: 0,
            __field0: AudioBusBuffers__type0 {
                channelBuffers32: in_ptrs.as_mut_ptr(),
            },
        };
        let mut outputs = AudioBusBuffers {
            numChannels: 2,
            silenceFlags: 0,
            __field0: AudioBusBuffers__type0 {
                channelBuffers32: out_ptrs.as_mut_ptr(),
            },
        };
        let mut context: ProcessContext = std::mem::zeroed();
        context.sampleRate = 48_000.0;
        context.tempo = 120.0;
        context.state = (ProcessContext_::StatesAndFlags_::kPlaying
            | ProcessContext_::StatesAndFlags_::kTempoValid) as _;
        let mut sounding = 0;
        // The block in which 0.3 s of the tempo has been heard, and the
        // crossfade after it.
        let switch = (14_400usize.div_ceil(n) - 1) * n;
        let xfade = 2_400;
        for k in 0..100usize {
            let start = k * n;
            context.projectTimeSamples = start as _;
            let mut data = ProcessData {
                processMode: ProcessModes_::kOffline as _,
                symbolicSampleSize: SymbolicSampleSizes_::kSample32 as _,
                numSamples: n as _,
                numInputs: 1,
                numOutputs: 1,
                inputs: &mut inputs,
                outputs: &mut outputs,
                inputParameterChanges: std::ptr::null_mut(),
                outputParameterChanges: std::ptr::null_mut(),
                inputEvents: std::ptr::null_mut(),
                outputEvents: std::ptr::null_mut(),
                processContext: &mut context,
            };
            assert_eq!(plugin.processor.process(&mut data), kResultOk, "process");
            let got = (
                std::slice::from_raw_parts(out_ptrs[0], n),
                std::slice::from_raw_parts(out_ptrs[1], n),
            );
            if start + n <= switch {
                sounding += assert_plays(got, &want, start as i64, "vst3");
            } else if start >= switch + xfade {
                sounding += assert_plays(got, &on_tempo, start as i64, "vst3, on the tempo");
            }
        }
        assert!(sounding > 20_000, "only {sounding} frames of music");
        assert_eq!(plugin.processor.setProcessing(0), kResultOk);
        assert_eq!(c.setActive(0), kResultOk);

        // State: what one instance saves, another loads and saves the same.
        let saved = get_state(&plugin);
        assert!(!saved.is_empty());
        let other = create(&factory, &host);
        set_state(&other, saved.clone());
        // The host is told to read the parameter values again.
        assert!(
            other
                .handler
                .restarts
                .borrow()
                .iter()
                .any(|f| f & RestartFlags_::kParamValuesChanged != 0),
            "no parameter values restart after setState: {:?}",
            other.handler.restarts.borrow()
        );
        assert_eq!(get_state(&other), saved);
        assert_eq!(other.component.terminate(), kResultOk);
        assert_eq!(plugin.component.terminate(), kResultOk);
        drop(other);
        drop(plugin);
        drop(factory);
        unload(lib);
    }
}

/// The tests of this binary take turns: both set environment variables
/// the plugin reads.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_vst3_build_opens_the_same_editor_in_the_hosts_window() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let d = common::xvfb::display();
    let (dir, _) = fixture();
    // A copy of its own: the other test's module entry and exit do not
    // touch this one's.
    let copy = dir.path().join("VidMusician-editor.so");
    std::fs::copy(built_library(), &copy).unwrap();
    let (w, h) = (900u16, 560u16);
    let parent = d.host_window(0, 0, w, h);
    let blank = d.grab(0, 0, w, h);
    unsafe {
        let (lib, factory) = load(&copy);
        let host = ComWrapper::new(Host);
        let plugin = create(&factory, &host);
        let controller = plugin
            .component
            .cast::<IEditController>()
            .expect("no IEditController");
        let view = ComPtr::from_raw(controller.createView(c"editor".as_ptr()))
            .expect("the VST3 build offers no editor");
        assert_eq!(
            view.isPlatformTypeSupported(kPlatformTypeX11EmbedWindowID),
            kResultOk
        );
        let mut rect = ViewRect {
            left: 0,
            top: 0,
            right: 0,
            bottom: 0,
        };
        assert_eq!(view.getSize(&mut rect), kResultOk);
        assert_eq!((rect.right - rect.left, rect.bottom - rect.top), (960, 600));
        let mut want = ViewRect {
            left: 0,
            top: 0,
            right: i32::from(w),
            bottom: i32::from(h),
        };
        assert_eq!(view.onSize(&mut want), kResultOk);
        assert_eq!(
            view.attached(
                parent as usize as *mut c_void,
                kPlatformTypeX11EmbedWindowID
            ),
            kResultOk
        );
        // The editor draws its controls and the empty timeline: many
        // colours (text, widgets) where the host's window was black.
        let drawn = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let shot = d.grab(0, 0, w, h);
            let colours: std::collections::HashSet<&[u8]> = shot.chunks_exact(3).collect();
            shot != blank && colours.len() > 20
        });
        assert!(drawn, "the VST3 editor drew nothing in the host's window");
        assert_eq!(view.removed(), kResultOk);
        drop(view);
        // Released, the view closes the editor's window: the host's is
        // black again.
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            d.grab(0, 0, w, h) == blank
        });
        assert!(gone, "the editor's window outlived its view");
        drop(controller);
        assert_eq!(plugin.component.terminate(), kResultOk);
        drop(plugin);
        drop(factory);
        unload(lib);
    }
    d.destroy_window(parent);
}
