//! The wordcount sample's answers: word counts computed naively here, and a job's results as
//! `wasmos job results` prints them, for the tests that compare the two.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use crate::{DevCluster, text};

/// Word counts as the wordcount sample defines them: lowercased runs of alphanumeric characters.
pub fn naive_counts(files: &[std::path::PathBuf]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap();
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            *counts.entry(w.to_lowercase()).or_default() += 1;
        }
    }
    counts
}

/// The results of a wordcount job, word to count.
pub fn job_word_counts(c: &DevCluster, job: &str) -> std::collections::BTreeMap<String, u64> {
    let out = c.cli(&["job", "results", job]).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| {
            let (w, n) = l.split_once('\t').unwrap();
            (w.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// The `.txt` files in `dir`, sorted.
pub fn data_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}
