//! Host-run tests: stable partitioning, streaming that never cuts a word or a character, and a
//! whole map-reduce round over temporary directories checked against a naive count.

use super::*;

fn naive(text: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *m.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    m
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wordcount-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn fnv_is_fixed() {
    // Published FNV-1a 64 test vectors: partitions must agree across processes and machines.
    assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
    assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
}

#[test]
fn chunks_never_cut_words_or_chars() {
    let mut text = String::from("Straße ÜBER über naïve-Café 42x\tx42 ünï\u{feff}cöde ");
    text.push_str("a\u{2003}b 日本語テキスト end");
    let mut bytes = text.clone().into_bytes();
    bytes.extend_from_slice(b" bad\xff\xfebytes tail\xe6\x97");
    let want = naive(&String::from_utf8_lossy(&bytes));
    for chunk in 1..=17 {
        let mut got = Counts::default();
        let n = count_stream(&bytes[..], chunk, &mut got).unwrap();
        assert_eq!(
            got.into_iter().collect::<HashMap<_, _>>(),
            want,
            "chunk {chunk}"
        );
        assert_eq!(n, want.values().sum::<u64>());
    }
}

#[test]
fn ascii_text_counts_like_any_text() {
    let text = "The the THE tHe, x1 1x 42 -- a-b\tc\nd  End.END end_x";
    let want = naive(text);
    for chunk in 1..=9 {
        let mut got = Counts::default();
        let n = count_stream(text.as_bytes(), chunk, &mut got).unwrap();
        assert_eq!(
            got.into_iter().collect::<HashMap<_, _>>(),
            want,
            "chunk {chunk}"
        );
        assert_eq!(n, want.values().sum::<u64>());
    }
}

#[test]
fn map_reduce_matches_naive_count() {
    let d = scratch("mr");
    let (a, b) = (d.join("in/a"), d.join("in/b"));
    gen_text(20_000, 1, &a.join("x/one.txt")).unwrap();
    gen_text(30_000, 2, &a.join("two.txt")).unwrap();
    gen_text(10_000, 3, &b.join("three.txt")).unwrap();
    fs::write(b.join("odd.txt"), "Émile émile ÉMILE, 3 apples; don't\n").unwrap();
    let mut want = HashMap::new();
    let mut files = Vec::new();
    collect_files(&d.join("in"), &mut files).unwrap();
    for f in &files {
        for (w, c) in naive(&fs::read_to_string(f).unwrap()) {
            *want.entry(w).or_insert(0) += c;
        }
    }
    for (i, input) in [&a, &b].iter().enumerate() {
        let out = d.join(format!("maps/m{i}"));
        let cmd = format!(
            "map --reducers 3 --out {} {}",
            out.display(),
            input.display()
        );
        assert!(run(&args(&cmd)).unwrap().starts_with("map: "));
    }
    let mut got = HashMap::new();
    for p in 0..3 {
        let out = d.join(format!("red/r{p}"));
        let cmd = format!(
            "reduce --part {p} --out {} {}",
            out.display(),
            d.join("maps").display()
        );
        let summary = run(&args(&cmd)).unwrap();
        let text = fs::read_to_string(out.join("counts.tsv")).unwrap();
        let rows: Vec<(String, u64)> = text
            .lines()
            .map(|l| l.split_once('\t').unwrap())
            .map(|(w, c)| (w.to_string(), c.parse().unwrap()))
            .collect();
        assert!(
            rows.windows(2)
                .all(|r| r[0].1 > r[1].1 || (r[0].1 == r[1].1 && r[0].0 < r[1].0))
        );
        let total: u64 = rows.iter().map(|r| r.1).sum();
        assert_eq!(
            summary,
            format!(
                "reduce: part {p}, {} distinct words, {total} total",
                rows.len()
            )
        );
        for (w, c) in rows {
            assert_eq!(fnv1a_64(w.as_bytes()) % 3, p);
            assert!(got.insert(w, c).is_none(), "word in two partitions");
        }
    }
    assert_eq!(got, want);
    assert_eq!(got["émile"], 3);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn gen_is_deterministic_and_skewed() {
    let d = scratch("gen");
    let (x, y, z) = (d.join("x"), d.join("y"), d.join("z"));
    for (f, seed) in [(&x, 7), (&y, 7), (&z, 8)] {
        gen_text(50_000, seed, f).unwrap();
    }
    let (x, y, z) = (
        fs::read(x).unwrap(),
        fs::read(y).unwrap(),
        fs::read(z).unwrap(),
    );
    assert_eq!(x, y);
    assert_ne!(x, z);
    assert!(x.len() >= 50_000 && x.len() < 50_200);
    let counts = naive(&String::from_utf8(x).unwrap());
    assert!(counts["the"] > 10 * counts.get("found").copied().unwrap_or(1));
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_is_an_error() {
    let d = scratch("bad");
    fs::write(d.join("part-0"), "ok\t1\nnot a count line\n").unwrap();
    let cmd = format!(
        "reduce --part 0 --out {} {}",
        d.join("o").display(),
        d.display()
    );
    let e = run(&args(&cmd)).unwrap_err();
    assert!(e.contains("part-0:2:"), "{e}");
    for cmd in [
        "",
        "help",
        "map --bogus 1",
        "map --reducers 0 --out o x",
        "map --reducers 2 --out o",
    ] {
        assert!(run(&args(cmd)).is_err(), "{cmd:?}");
    }
    let e = run(&args("map --reducers 1 --out o /no/such/path")).unwrap_err();
    assert!(e.contains("/no/such/path"), "{e}");
    fs::remove_dir_all(&d).unwrap();
}
