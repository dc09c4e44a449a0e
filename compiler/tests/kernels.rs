//! Snapshot tests of generated kernels: every `tests/kernels/*.txt` is a
//! small graph (text form of `opt::text`), one per op family and one per
//! fused-kernel shape (a `# target:` header picks a device target's kernel
//! set). It is compiled with the optimizer and every kernel of
//! the bundle is recorded as WGSL (as naga writes it back), MSL and a SPIR-V
//! disassembly (rspirv), so any codegen change shows in review. `INSTA_UPDATE=always` (or
//! `cargo insta accept`) blesses new output.

use drift_compiler::{Options, compile_graph, opt};
use std::path::Path;

/// Options from the case's header lines: `# target: NAME` compiles for a
/// device target instead of `generic`, `# precision: f16` with f16
/// activations.
fn options(src: &str) -> Result<Options, String> {
    let mut opts = Options::default();
    for line in src.lines().filter_map(|l| l.strip_prefix("# ")) {
        if let Some(name) = line.strip_prefix("target: ") {
            let t = drift_ops::Target::named(name.trim()).ok_or(format!("unknown target {name}"))?;
            opts.targets = vec![t];
        } else if line.trim() == "precision: f16" {
            opts.f16 = true;
        }
    }
    Ok(opts)
}

fn kernels_text(src: &str) -> Result<(String, usize), String> {
    let g = opt::text::parse(src)?;
    let compiled = compile_graph(g, &options(src)?).map_err(|e| e.to_string())?;
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
            "// ===== kernel {} (node {}, workgroup {:?}, groups {:?})\n{}\n// ----- MSL\n{}\n// ----- SPIR-V\n{}\n",
            k.name,
            d.label,
            k.workgroup_size,
            d.workgroups,
            k.wgsl,
            k.msl,
            disassemble(&k.spirv)?
        );
    }
    Ok((out, seen.len()))
}

/// SPIR-V assembly of the module's little-endian words.
fn disassemble(bytes: &[u8]) -> Result<String, String> {
    use rspirv::binary::Disassemble;
    let words: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let module = rspirv::dr::load_words(&words).map_err(|e| format!("SPIR-V does not parse: {e}"))?;
    Ok(module.disassemble())
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
