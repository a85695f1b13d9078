//! Human quantities: `500m` or `1.5` cores, `64MiB` or `1G` bytes, and their display.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("`{0}` is not a CPU amount (examples: 500m, 1, 2.5)")]
    Cpu(String),
    #[error("`{0}` is not a byte size (examples: 64MiB, 1GiB, 512KiB, 100M, 4096)")]
    Bytes(String),
}

/// Parses `500m` (millicores) or a decimal number of cores into millicores.
pub fn parse_cpu(s: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError::Cpu(s.to_string());
    let t = s.trim();
    if let Some(m) = t.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| err());
    }
    decimal_times(t, 1000).ok_or_else(err)
}

/// Parses a byte size with an optional binary (KiB, MiB, GiB) or decimal (K, M, G, KB...) suffix.
pub fn parse_bytes(s: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError::Bytes(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "k" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    decimal_times(num, mult).ok_or_else(err)
}

/// `num` (a non-negative decimal) times `mult`, exactly, in integers.
fn decimal_times(num: &str, mult: u64) -> Option<u64> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int_part = if int.is_empty() {
        0
    } else {
        int.parse::<u64>().ok()?
    };
    let mut total = int_part.checked_mul(mult)?;
    if !frac.is_empty() {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let scale = 10u64.pow(frac.len() as u32);
        let f = frac.parse::<u64>().ok()?;
        total = total.checked_add(f.checked_mul(mult)? / scale)?;
    }
    Some(total)
}

pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    for (name, size) in UNITS {
        if bytes >= size {
            return format!("{:.1}{name}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// A duration in milliseconds the way users write them: `90s`, `2h`, `1500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ];
    for (name, size) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{name}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_amounts() {
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("1"), Ok(1000));
        assert_eq!(parse_cpu("2.5"), Ok(2500));
        assert_eq!(parse_cpu(".25"), Ok(250));
        assert!(parse_cpu("lots").is_err());
        assert!(parse_cpu("-1").is_err());
        assert_eq!(format_cpu(500), "500m");
        assert_eq!(format_cpu(2000), "2");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1536), "1.5KiB");
        assert_eq!(format_bytes(12), "12B");
        assert_eq!(format_duration_ms(86_400_000), "1d");
        assert_eq!(format_duration_ms(90_000), "90s");
        assert_eq!(format_duration_ms(1500), "1500ms");
    }
}
