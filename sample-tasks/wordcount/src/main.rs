//! Word-count sample of a map-reduce batch job: `map` turns input text into per-partition word
//! counts, `reduce` merges one partition from all mappers, and `gen` makes input text so that
//! tests and benchmarks need not ship data. Any error exits with code 2.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage:
  wordcount map --reducers R --out DIR PATH...
  wordcount reduce --part P --out DIR PATH...
  wordcount gen --bytes N --seed S --out FILE";

/// Big enough that per-read overhead vanishes, small enough that memory stays flat on huge inputs.
const CHUNK: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(summary) => println!("{summary}"),
        Err(e) => {
            eprintln!("wordcount: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let (cmd, rest) = args.split_first().ok_or_else(|| USAGE.to_string())?;
    match cmd.as_str() {
        "map" => {
            let (flags, paths) = parse(rest, &["--reducers", "--out"])?;
            map(
                num(&flags, "--reducers")?,
                Path::new(&flag(&flags, "--out")?),
                &paths,
            )
        }
        "reduce" => {
            let (flags, paths) = parse(rest, &["--part", "--out"])?;
            reduce(
                num(&flags, "--part")?,
                Path::new(&flag(&flags, "--out")?),
                &paths,
            )
        }
        "gen" => {
            let (flags, paths) = parse(rest, &["--bytes", "--seed", "--out"])?;
            if let Some(p) = paths.first() {
                return Err(format!("gen takes no PATH, got {}\n{USAGE}", p.display()));
            }
            let out = PathBuf::from(flag(&flags, "--out")?);
            gen_text(num(&flags, "--bytes")?, num(&flags, "--seed")?, &out)
        }
        _ => Err(USAGE.to_string()),
    }
}

type Flags = HashMap<&'static str, String>;

fn parse(args: &[String], known: &[&'static str]) -> Result<(Flags, Vec<PathBuf>), String> {
    let (mut flags, mut paths) = (HashMap::new(), Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(&name) = known.iter().find(|&&k| k == a) {
            let v = it
                .next()
                .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))?;
            flags.insert(name, v.clone());
        } else if a.starts_with('-') {
            return Err(format!("unknown flag {a}\n{USAGE}"));
        } else {
            paths.push(PathBuf::from(a));
        }
    }
    Ok((flags, paths))
}

fn flag(flags: &Flags, name: &str) -> Result<String, String> {
    flags
        .get(name)
        .cloned()
        .ok_or_else(|| format!("missing {name}\n{USAGE}"))
}

fn num<T: std::str::FromStr>(flags: &Flags, name: &str) -> Result<T, String> {
    let v = flag(flags, name)?;
    v.parse()
        .map_err(|_| format!("{name} wants a non-negative integer, got {v:?}"))
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> String {
    let path = path.display().to_string();
    move |e| format!("cannot {what} {path}: {e}")
}

/// Partitions by a fixed hash because every mapper must send a word to the same reducer, which
/// std's per-process randomized hasher would not do.
fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// FxHash (rustc's): word keys come from the task's own input, so std's DoS-resistant SipHash
/// buys nothing here and costs most of a mapper's time.
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Counts = HashMap<String, u64, std::hash::BuildHasherDefault<Fx>>;

fn count_words(text: &str, counts: &mut Counts) -> u64 {
    if text.is_ascii() {
        return count_ascii_words(text.as_bytes(), counts);
    }
    let mut n = 0;
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        n += 1;
        // Most words are already lowercase ASCII; skipping to_lowercase saves an allocation each.
        let lower: Cow<str> = if w
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Cow::Borrowed(w)
        } else {
            Cow::Owned(w.to_lowercase())
        };
        match counts.get_mut(lower.as_ref()) {
            Some(c) => *c += 1,
            None => drop(counts.insert(lower.into_owned(), 1)),
        }
    }
    n
}

/// [`count_words`] for ASCII text (nearly all text, and every generated corpus): words are runs
/// of ASCII letters and digits, found byte by byte instead of char by char.
fn count_ascii_words(text: &[u8], counts: &mut Counts) -> u64 {
    let mut n = 0;
    let mut lower = String::new();
    let mut i = 0;
    while i < text.len() {
        if !text[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        let mut upper = false;
        while i < text.len() && text[i].is_ascii_alphanumeric() {
            upper |= text[i].is_ascii_uppercase();
            i += 1;
        }
        n += 1;
        let word = &text[start..i];
        // ASCII throughout, so these are valid UTF-8 slices.
        let key: &str = if upper {
            lower.clear();
            lower.extend(word.iter().map(|b| b.to_ascii_lowercase() as char));
            &lower
        } else {
            std::str::from_utf8(word).unwrap_or_default()
        };
        match counts.get_mut(key) {
            Some(c) => *c += 1,
            None => drop(counts.insert(key.to_string(), 1)),
        }
    }
    n
}

/// Decodes only up to the last ASCII non-alphanumeric byte of what has been read: such a byte
/// ends any word and never sits inside a UTF-8 sequence, so neither a word nor a character is cut
/// between chunks. A file without such bytes is thus held whole, as its words would be anyway.
fn count_stream(mut r: impl Read, chunk: usize, counts: &mut Counts) -> io::Result<u64> {
    let (mut buf, mut total) = (Vec::new(), 0);
    loop {
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let n = loop {
            match r.read(&mut buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            return Ok(total + count_words(&String::from_utf8_lossy(&buf), counts));
        }
        // The carry-over holds no boundary, so only new bytes need scanning (else quadratic).
        let boundary = buf[start..]
            .iter()
            .rposition(|b| b.is_ascii() && !b.is_ascii_alphanumeric());
        if let Some(i) = boundary.map(|i| start + i) {
            total += count_words(&String::from_utf8_lossy(&buf[..=i]), counts);
            buf.drain(..=i);
        }
    }
}

/// Sorted so that output (and a job's result) does not depend on directory listing order.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if fs::metadata(path).map_err(io_err("read", path))?.is_dir() {
        let mut entries = fs::read_dir(path)
            .and_then(|d| {
                d.map(|e| e.map(|e| e.path()))
                    .collect::<io::Result<Vec<_>>>()
            })
            .map_err(io_err("list directory", path))?;
        entries.sort();
        for e in entries {
            collect_files(&e, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn inputs(paths: &[PathBuf], cmd: &str) -> Result<Vec<PathBuf>, String> {
    if paths.is_empty() {
        return Err(format!("{cmd} needs at least one input PATH\n{USAGE}"));
    }
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, &mut files)?;
    }
    Ok(files)
}

fn write_counts(path: &Path, words: &[(&str, u64)]) -> Result<(), String> {
    let mut w = BufWriter::new(File::create(path).map_err(io_err("create", path))?);
    for (word, c) in words {
        writeln!(w, "{word}\t{c}").map_err(io_err("write", path))?;
    }
    w.flush().map_err(io_err("write", path))
}

fn map(reducers: usize, out: &Path, paths: &[PathBuf]) -> Result<String, String> {
    if reducers == 0 {
        return Err("--reducers must be at least 1".into());
    }
    let (mut counts, mut total) = (Counts::default(), 0);
    for f in inputs(paths, "map")? {
        let file = File::open(&f).map_err(io_err("open", &f))?;
        total += count_stream(file, CHUNK, &mut counts).map_err(io_err("read", &f))?;
    }
    let mut parts: Vec<Vec<(&str, u64)>> = vec![Vec::new(); reducers];
    for (w, &c) in &counts {
        parts[(fnv1a_64(w.as_bytes()) % reducers as u64) as usize].push((w, c));
    }
    fs::create_dir_all(out).map_err(io_err("create directory", out))?;
    for (i, part) in parts.iter_mut().enumerate() {
        part.sort_unstable();
        write_counts(&out.join(format!("part-{i}")), part)?;
    }
    Ok(format!(
        "map: {total} words, {} distinct, {reducers} parts",
        counts.len()
    ))
}

fn reduce(part: usize, out: &Path, paths: &[PathBuf]) -> Result<String, String> {
    let name = format!("part-{part}");
    let mut counts = Counts::default();
    let mut total: u64 = 0;
    for f in inputs(paths, "reduce")? {
        if f.file_name().is_none_or(|n| n != name.as_str()) {
            continue;
        }
        let file = File::open(&f).map_err(io_err("open", &f))?;
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let bad = |why: &str| format!("{}:{}: {why}", f.display(), i + 1);
            let line = line.map_err(|e| bad(&e.to_string()))?;
            let (word, c) = line
                .rsplit_once('\t')
                .ok_or_else(|| bad("expected word<TAB>count"))?;
            let c: u64 = c.parse().map_err(|_| bad(&format!("bad count {c:?}")))?;
            if word.is_empty() {
                return Err(bad("empty word"));
            }
            let sum = counts.entry(word.to_string()).or_insert(0);
            *sum = sum.checked_add(c).ok_or_else(|| bad("count overflows"))?;
            total = total.checked_add(c).ok_or_else(|| bad("total overflows"))?;
        }
    }
    let mut sorted: Vec<(&str, u64)> = counts.iter().map(|(w, &c)| (w.as_str(), c)).collect();
    sorted.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    fs::create_dir_all(out).map_err(io_err("create directory", out))?;
    write_counts(&out.join("counts.tsv"), &sorted)?;
    Ok(format!(
        "reduce: part {part}, {} distinct words, {total} total",
        sorted.len()
    ))
}

const WORDS: &str = "the of and to a in is you that it he was for on are as with his they i at be
this have from or one had by word but not what all were we when your can said there use an each
which she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than first water
been call who oil its now find long down day did get come made may part over new sound take only
little work know place year live me back give most very after thing our just name good sentence
man think say great where help through much before line right too mean old any same tell boy
follow came want show also around form three small set put end does another well large must big
even such because turn here why ask went men read need land different home us move try kind hand
picture again change off play spell air away animal house point page letter mother answer found";

/// xorshift64*: tiny, deterministic across platforms, and plenty random for filler text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn gen_text(bytes: u64, seed: u64, out: &Path) -> Result<String, String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    // Mixed so that small seeds differ at once; never zero, where xorshift would stay stuck.
    let mut rng = Rng((seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xbf58_476d_1ce4_e5b9) | 1);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    }
    let mut w = BufWriter::new(File::create(out).map_err(io_err("create", out))?);
    let mut written = 0u64;
    while written < bytes {
        let mut line = String::new();
        for i in 0..6 + rng.next() % 9 {
            // Cubing a uniform draw skews toward the list's head, so counts spread like real text.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let word = words[((u * u * u) * words.len() as f64) as usize];
            if i > 0 {
                line.push(' ');
            }
            // Capitalized sentence starts exercise the mapper's lowercasing.
            if i == 0 {
                line.push_str(&word[..1].to_uppercase());
                line.push_str(&word[1..]);
            } else {
                line.push_str(word);
            }
        }
        line.push_str(".\n");
        w.write_all(line.as_bytes()).map_err(io_err("write", out))?;
        written += line.len() as u64;
    }
    w.flush().map_err(io_err("write", out))?;
    Ok(format!("gen: {written} bytes to {}", out.display()))
}

#[cfg(test)]
mod tests;
