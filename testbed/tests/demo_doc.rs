//! `docs/windbg.md` shows the trace of `testbed demo` line by line: this test
//! keeps the two in step (addresses and handles aside).

fn normalize(line: &str) -> String {
    line.split(' ')
        .map(|word| match word.split_once("0x") {
            Some((key, _)) => format!("{key}0x?"),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_windbg_page_shows_the_demo_trace_in_order() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/windbg.md")).unwrap();
    let section = &doc[doc.find("## A healthy run").expect("the section")..];
    let documented: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("nmr_client: ") || l.starts_with("nmr_provider: "))
        .map(normalize)
        .collect();
    let produced: Vec<String> = testbed::demo::run(false)
        .iter()
        .map(|l| normalize(l))
        .collect();
    assert_eq!(
        documented, produced,
        "docs/windbg.md and `testbed demo` disagree"
    );
}
