//! Data-driven pass tests: each `tests/passes/*.txt` holds a graph in the
//! text form of `opt::text`, the passes to run (`# pass: NAME, NAME`) and,
//! after `--- expected`, the graph they must produce. `DRIFT_BLESS=1`
//! rewrites the expected part from what the passes produce now.

use drift_compiler::{control, opt, passes};
use std::path::Path;

const EXPECTED: &str = "--- expected\n";

fn run(src: &str) -> Result<String, String> {
    let names =
        src.lines().find_map(|l| l.strip_prefix("# pass:")).ok_or("the file names no passes ('# pass: NAME')")?;
    let list: Vec<&opt::Pass> = names
        .split(',')
        .map(|n| opt::pass(n.trim()).ok_or_else(|| format!("no pass named '{}'", n.trim())))
        .collect::<Result<_, _>>()?;
    let mut g = opt::text::parse(src)?;
    passes::build_ops(&mut g).map_err(|e| e.to_string())?;
    let order = control::infer_with_control_flow(&mut g).map_err(|e| e.to_string())?;
    let order = opt::run(&mut g, order, &list).map_err(|e| e.to_string())?;
    // Release builds skip the check between passes; the tests always run it.
    opt::rewrite::check(&g, &order, names.trim()).map_err(|e| e.to_string())?;
    Ok(opt::text::print(&g, &order))
}

#[test]
fn passes_produce_the_expected_graphs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    let bless = std::env::var_os("DRIFT_BLESS").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("tests/passes").flatten().map(|e| e.path()).collect();
    files.sort();
    let mut failures = vec![];
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "txt")) {
        let text = std::fs::read_to_string(path).expect("readable test");
        let (input, expected) = text.split_once(EXPECTED).unwrap_or((&text, ""));
        let got = run(input).unwrap_or_else(|e| format!("error: {e}\n"));
        if bless {
            std::fs::write(path, format!("{input}{EXPECTED}{got}")).expect("writable test");
        } else if got != expected {
            failures.push(format!("{}:\n--- got\n{got}--- want\n{expected}", path.display()));
        }
    }
    assert!(files.len() >= 10, "expected the pass tests in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} pass test(s) differ (DRIFT_BLESS=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
