//! An X server for the editor's tests and benchmark (Xvfb, with Mesa's
//! software OpenGL), a host window to embed the editor in, screenshots and
//! X input (XTest); and opening and closing the editor as a host does.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clack_extensions::gui::{GuiApiType, GuiConfiguration, GuiSize, PluginGui, Window};
use clack_host::prelude::*;
use vidmusician_plugin::editor::model::{EditorModel, live};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{
    ConnectionExt as _, CreateWindowAux, ImageFormat, Window as XWindow, WindowClass,
};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

use super::TestHost;

/// The X server of this test binary, and a connection to it that lives as
/// long as the process: the server is started with `-terminate`, so it
/// ends when the last client (this one, at exit) goes.
pub struct Display {
    _server: Child,
    conn: RustConnection,
    screen: usize,
    /// Tests take turns: X input is one stream, and each finds its
    /// instance's editor model as the newest one.
    pub turn: Mutex<()>,
}

pub fn display() -> &'static Display {
    static D: OnceLock<Display> = OnceLock::new();
    D.get_or_init(|| {
        let mut server = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1280x800x24"])
            .args(["-nolisten", "tcp", "-terminate"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb is needed for the editor tests: apt-get install xvfb");
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let name = format!(":{}", line.trim());
        assert!(name.len() > 1, "Xvfb named no display");
        // SAFETY: set before any instance of this binary opens a window
        // (every test asks for the display first, and waits here).
        unsafe { std::env::set_var("DISPLAY", &name) };
        let (conn, screen) = RustConnection::connect(Some(&name)).unwrap();
        Display {
            _server: server,
            conn,
            screen,
            turn: Mutex::new(()),
        }
    })
}

impl Display {
    pub fn root(&self) -> XWindow {
        self.conn.setup().roots[self.screen].root
    }

    /// A host window at (x, y) to embed an editor in.
    pub fn host_window(&self, x: i16, y: i16, w: u16, h: u16) -> XWindow {
        let c = &self.conn;
        let win = c.generate_id().unwrap();
        let screen = &c.setup().roots[self.screen];
        c.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            win,
            screen.root,
            x,
            y,
            w,
            h,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(screen.black_pixel),
        )
        .unwrap();
        c.map_window(win).unwrap();
        c.flush().unwrap();
        win
    }

    pub fn destroy_window(&self, win: XWindow) {
        self.conn.destroy_window(win).unwrap();
        self.conn.flush().unwrap();
    }

    /// What the screen shows at (x, y, w, h), as RGB.
    pub fn grab(&self, x: i16, y: i16, w: u16, h: u16) -> Vec<u8> {
        let img = self
            .conn
            .get_image(ImageFormat::Z_PIXMAP, self.root(), x, y, w, h, !0)
            .unwrap()
            .reply()
            .unwrap();
        // Depth 24 at 32 bits a pixel, little-endian: B, G, R, unused.
        img.data
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect()
    }

    pub fn click(&self, x: i16, y: i16) {
        let c = &self.conn;
        let root = self.root();
        // XTest: motion (6), button press (4) and release (5).
        c.xtest_fake_input(6, 0, 0, root, x, y, 0).unwrap();
        c.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        c.xtest_fake_input(4, 1, 0, root, x, y, 0).unwrap();
        c.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        c.xtest_fake_input(5, 1, 0, root, x, y, 0).unwrap();
        c.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }

    /// Presses at (x0, y), moves to (x1, y) in steps, releases. The press
    /// comes with the first move and the last move with the release, as a
    /// busy machine's frame sees them: the drag is seen to start only away
    /// from where it began, and to end as it is let go.
    pub fn drag(&self, x0: i16, x1: i16, y: i16) {
        let c = &self.conn;
        let root = self.root();
        let step = |kind: u8, detail: u8, x: i16, pause: u64| {
            c.xtest_fake_input(kind, detail, 0, root, x, y, 0).unwrap();
            c.flush().unwrap();
            std::thread::sleep(Duration::from_millis(pause));
        };
        step(6, 0, x0, 40);
        step(4, 1, x0, 0);
        for k in 1..=10 {
            step(6, 0, x0 + (x1 - x0) * k / 10, if k == 10 { 0 } else { 40 });
        }
        step(5, 1, x1, 40);
    }

    /// Types `text` (printable ASCII) and presses Return, through the
    /// server's keyboard map.
    pub fn type_line(&self, text: &str) {
        let c = &self.conn;
        let setup = c.setup();
        let (min, max) = (setup.min_keycode, setup.max_keycode);
        let map = c
            .get_keyboard_mapping(min, max - min + 1)
            .unwrap()
            .reply()
            .unwrap();
        let per = map.keysyms_per_keycode as usize;
        // Latin-1 keysyms are the characters' codes; Return is 0xff0d,
        // left Shift 0xffe1.
        let find = |sym: u32| -> (u8, bool) {
            for (i, syms) in map.keysyms.chunks(per).enumerate() {
                for (level, &s) in syms.iter().take(2).enumerate() {
                    if s == sym {
                        return (min + i as u8, level == 1);
                    }
                }
            }
            panic!("no key types {sym:#x}");
        };
        let (shift, _) = find(0xffe1);
        let key = |code: u8, press: bool| {
            c.xtest_fake_input(if press { 2 } else { 3 }, code, 0, x11rb::NONE, 0, 0, 0)
                .unwrap();
            c.flush().unwrap();
            std::thread::sleep(Duration::from_millis(8));
        };
        for sym in text.chars().map(|ch| ch as u32).chain([0xff0d]) {
            let (code, shifted) = find(sym);
            if shifted {
                key(shift, true);
            }
            key(code, true);
            key(code, false);
            if shifted {
                key(shift, false);
            }
        }
    }
}

/// Waits up to `secs` for `ok`.
pub fn wait_for(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok()
}

/// The editor model of the instance made last.
pub fn newest_model() -> Arc<EditorModel> {
    live().pop().expect("an instance lists its editor model")
}

/// Opens the editor in `parent`, as a host does: create, scale, parent,
/// size, show.
pub fn open_editor(inst: &mut PluginInstance<TestHost>, parent: XWindow, size: (u32, u32)) {
    let gui = inst
        .plugin_handle()
        .get_extension::<PluginGui>()
        .expect("the plugin offers an editor");
    let config = GuiConfiguration {
        api_type: GuiApiType::default_for_current_platform().unwrap(),
        is_floating: false,
    };
    let h = inst.plugin_handle();
    assert!(gui.is_api_supported(&h, config));
    gui.create(&h, config).unwrap();
    gui.set_scale(&h, 1.0).unwrap();
    // SAFETY: the window lives until after the editor is destroyed.
    unsafe {
        gui.set_parent(&h, Window::from_x11_handle(u64::from(parent) as _))
            .unwrap()
    };
    gui.set_size(
        &h,
        GuiSize {
            width: size.0,
            height: size.1,
        },
    )
    .unwrap();
    gui.show(&h).unwrap();
}

pub fn close_editor(inst: &mut PluginInstance<TestHost>) {
    let gui = inst.plugin_handle().get_extension::<PluginGui>().unwrap();
    gui.destroy(&inst.plugin_handle());
}
