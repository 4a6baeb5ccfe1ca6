//! End-to-end tests of the built plugin in real hosts, kept apart from the
//! plugin's in-process tests: `bundle.rs` loads the `.clap` file from disk
//! as a host finds it, `vst3.rs` hosts the VST3 build through the `vst3`
//! crate, `ardour.rs` has Debian's Ardour build a session with the plugin
//! and render it headless. They share the plugin's test helpers
//! (`plugin/tests/common`). This library holds no code.
