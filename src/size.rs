//! Sizes as virsh spells them: `10G`, `512MiB`, `1GB`, `4096b`, `1.5G`.
//!
//! Binary suffixes (K, KiB, M, MiB, G, GiB, T, TiB, P, PiB, E, EiB) are powers of 1024;
//! decimal ones (KB, MB, GB, TB, PB, EB) are powers of 1000; `b`/`B`/no suffix is bytes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size is empty")]
    Empty,
    #[error("size '{0}' is negative")]
    Negative(String),
    #[error("size '{input}' has no number before the unit")]
    NoNumber { input: String },
    #[error("size '{input}' has unknown unit '{unit}' (use b, K/KiB, M/MiB, G/GiB, T/TiB, KB/MB/GB/TB)")]
    BadUnit { input: String, unit: String },
    #[error("size '{0}' is too large")]
    Overflow(String),
    #[error("size '{0}': exponent notation is not a size (a lone E means EiB); write the number out, e.g. 10G")]
    Exponent(String),
}

/// Parse a capacity; `default_unit` applies to bare numbers (virsh: bytes).
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    parse_size_with_default(input, 1)
}

pub fn parse_size_with_default(input: &str, default_unit: u64) -> Result<u64, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    if s.starts_with('-') {
        return Err(SizeError::Negative(input.to_string()));
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(SizeError::NoNumber { input: input.to_string() });
    }
    let mult: u64 = match unit.trim() {
        "" => default_unit,
        "b" | "B" | "bytes" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "P" | "p" | "PiB" => 1 << 50,
        "E" | "e" | "EiB" => 1 << 60,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        "EB" => 1_000_000_000_000_000_000,
        other
            if other.len() > 1
                && other.starts_with(['e', 'E'])
                && other[1..].trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit()) =>
        {
            return Err(SizeError::Exponent(input.to_string()))
        }
        other => return Err(SizeError::BadUnit { input: input.to_string(), unit: other.to_string() }),
    };
    let overflow = || SizeError::Overflow(input.to_string());
    match num.split_once('.') {
        None => num.parse::<u64>().map_err(|_| overflow())?.checked_mul(mult).ok_or_else(overflow),
        Some((int, frac)) => {
            // Exact decimal arithmetic: int*mult + frac*mult/10^len, rounded down to a byte.
            let int: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| overflow())? };
            let frac_digits = frac.len().min(18) as u32;
            let frac_val: u128 =
                if frac_digits == 0 { 0 } else { frac[..frac_digits as usize].parse().map_err(|_| overflow())? };
            let total = int
                .checked_mul(mult as u128)
                .and_then(|t| t.checked_add(frac_val * mult as u128 / 10u128.pow(frac_digits)))
                .ok_or_else(overflow)?;
            u64::try_from(total).map_err(|_| overflow())
        }
    }
}

/// `10.00 GiB`, as virsh prints capacities.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}.00 B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4KB").unwrap(), 4000);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("1TB").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_size("4096b").unwrap(), 4096);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size_with_default("2", 1 << 30).unwrap(), 2 << 30);
    }

    #[test]
    fn malformed_sizes_are_refused_with_the_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("  "), Err(SizeError::Empty));
        assert_eq!(parse_size("-1G"), Err(SizeError::Negative("-1G".into())));
        assert!(matches!(parse_size("10X"), Err(SizeError::BadUnit { unit, .. }) if unit == "X"));
        assert!(matches!(parse_size("G"), Err(SizeError::NoNumber { .. })));
        assert!(matches!(parse_size("1.2.3G"), Err(SizeError::NoNumber { .. })));
        assert!(matches!(parse_size("1 0G"), Err(SizeError::BadUnit { .. })));
        assert_eq!(parse_size("99999999999E"), Err(SizeError::Overflow("99999999999E".into())));
        assert_eq!(parse_size("16E"), Err(SizeError::Overflow("16E".into())));
    }

    /// Issue 10: every size beyond 2^64 bytes is "too large", however it is written; none
    /// wraps around into a small one or shows Rust's conversion message.
    #[test]
    fn sizes_beyond_u64_are_too_large() {
        assert_eq!(parse_size("18446744073709551615b").unwrap(), u64::MAX, "the largest u64 is a size");
        assert_eq!(parse_size("15.999999999999999999E").unwrap(), 18446744073709551614);
        for s in [
            "18446744073709551616b",
            "18446744073709551616",
            "99999999999T",
            "99999999999TB",
            "16384P",
            "16.0E",
            "1000000000000000000000000000000",
            "999999999999999999999999999999.5E",
            "340282366920938463463374607431768211456.5",
            "17179869184G",
        ] {
            let e = parse_size(s).unwrap_err();
            assert_eq!(e, SizeError::Overflow(s.into()));
            assert_eq!(e.to_string(), format!("size '{s}' is too large"));
        }
        for s in ["1e30", "1.5E9", "2e+3", "1e-3"] {
            let e = parse_size(s).unwrap_err();
            assert_eq!(e, SizeError::Exponent(s.into()));
            assert!(e.to_string().contains("exponent notation is not a size"), "{e}");
        }
        assert_eq!(parse_size("1e").unwrap(), 1 << 60, "E alone is still EiB");
    }

    #[test]
    fn human_sizes_like_virsh() {
        assert_eq!(human(10 << 30), "10.00 GiB");
        assert_eq!(human(196 << 10), "196.00 KiB");
        assert_eq!(human(12), "12.00 B");
    }
}
