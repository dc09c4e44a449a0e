//! Fuzz target: ONNX import and the whole compile pipeline, up to the bundle
//! bytes (`drift compile` without writing the file); no GPU.
//!
//! External data resolve against a folder that does not exist, so an input
//! can never make the compiler read a file of the host.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let dir = Path::new("/nonexistent/drift-fuzz");
    let Ok(graph) = drift_compiler::import::import_bytes(data, &dir.join("model.onnx"), dir) else { return };
    if let Ok(compiled) = drift_compiler::compile_graph(graph, &drift_compiler::Options::default()) {
        let bytes = compiled.to_bytes();
        // What the compiler writes, the runtime must accept.
        if let Err(e) = drift_runtime::Model::from_bytes(bytes) {
            panic!("the compiler wrote a bundle the runtime rejects: {e}");
        }
    }
});
