//! Snapshot tests of generated kernels: every `tests/kernels/*.txt` is a
//! small graph (text form of `opt::text`), one per op family and one per
//! fused-kernel shape. It is compiled with the optimizer and every kernel of
//! the bundle is recorded as WGSL (as naga writes it back) and MSL, so any
//! codegen change shows in review. `INSTA_UPDATE=always` (or
//! `cargo insta accept`) blesses new output.

use drift_compiler::{Options, compile_graph, opt};
use std::path::Path;

fn kernels_text(src: &str) -> Result<(String, usize), String> {
    let g = opt::text::parse(src)?;
    let compiled = compile_graph(g, &Options::default()).map_err(|e| e.to_string())?;
    let b = &compiled.program.bundle;
    let mut out = String::new();
    let mut seen = vec![];
    for d in &b.dispatches {
        if seen.contains(&d.kernel) {
            continue;
        }
        seen.push(d.kernel);
        let k = &b.kernels[d.kernel as usize];
        out += &format!(
            "// ===== kernel {} (node {}, workgroup {:?}, groups {:?})\n{}\n// ----- MSL\n{}\n",
            k.name, d.label, k.workgroup_size, d.workgroups, k.wgsl, k.msl
        );
    }
    Ok((out, seen.len()))
}

#[test]
fn kernel_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/kernels").flatten().map(|e| e.path()).collect();
    files.sort();
    let mut kernels = 0;
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "txt")) {
        let name = path.file_stem().expect("file name").to_string_lossy().into_owned();
        let src = std::fs::read_to_string(path).expect("readable case");
        let (text, n) = kernels_text(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        kernels += n;
        insta::assert_snapshot!(name, text);
    }
    assert!(kernels >= 30, "only {kernels} kernels snapshotted");
}
