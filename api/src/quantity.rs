//! Parsers for human-written amounts, shared by the topology (VM memory, netem delays, loss percentages,
//! rates) and the control plane (Kubernetes CPU and memory quantities of requests and allocatable). Each
//! returns a message that says what a valid value looks like.

/// Splits `12.5Mi` into (`12.5`, `Mi`).
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    s.split_at(end)
}

/// A non-negative decimal as (integer part, fraction digits), without floating point so `0.1` stays exact.
fn decimal(num: &str) -> Option<(u128, u128, u32)> {
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if int.len() > 20 || frac.len() > 9 {
        return None;
    }
    let i = int.parse::<u128>().ok()?;
    let f = if frac.is_empty() { 0 } else { frac.parse::<u128>().ok()? };
    Some((i, f, frac.len() as u32))
}

/// `value * scale`, rounded up (Kubernetes rounds memory up to whole bytes, CPU up to whole millicores).
fn scaled_ceil(num: &str, scale: u128) -> Option<u128> {
    let (i, f, digits) = decimal(num)?;
    let denom = 10u128.pow(digits);
    let whole = i.checked_mul(scale)?;
    let frac = f.checked_mul(scale)?;
    whole.checked_add(frac.div_ceil(denom))
}

/// VM memory in MiB, QEMU style: `1024M`, `2G`, `512Mi`, `1Gi`, or a bare number of MiB. `M`/`G` are binary
/// here, as in `qemu -m`.
pub fn vm_memory_mib(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a memory size (use 512M, 1G, 1Gi)");
    let (num, unit) = split_number(s.trim());
    let scale: u128 = match unit {
        "" | "M" | "Mi" | "MB" | "MiB" => 1,
        "G" | "Gi" | "GB" | "GiB" => 1024,
        _ => return Err(bad()),
    };
    let mib = scaled_ceil(num, scale).ok_or_else(bad)?;
    u64::try_from(mib).map_err(|_| bad())
}

/// A Kubernetes CPU quantity in millicores: `500m`, `0.5`, `2`.
pub fn cpu_millis(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a CPU quantity (use 250m, 0.5 or 2)");
    let (num, unit) = split_number(s.trim());
    let millis = match unit {
        "m" => {
            if num.contains('.') {
                return Err(format!(
                    "\"{s}\": millicores must be whole (use {}m)",
                    num.split('.').next().unwrap_or("0")
                ));
            }
            scaled_ceil(num, 1)
        }
        "" => {
            let (_, f, digits) = decimal(num).ok_or_else(bad)?;
            if digits > 3 && f % 10u128.pow(digits - 3) != 0 {
                return Err(format!("\"{s}\" is finer than 1m, the smallest CPU unit"));
            }
            scaled_ceil(num, 1000)
        }
        _ => None,
    }
    .ok_or_else(bad)?;
    u64::try_from(millis).map_err(|_| bad())
}

/// A Kubernetes memory quantity in bytes: `64Mi`, `1Gi`, `128M` (10^6), `1000`, `1.5Gi`.
pub fn memory_bytes(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a memory quantity (use 64Mi, 1Gi, 128M or a number of bytes)");
    let (num, unit) = split_number(s.trim());
    let scale: u128 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = scaled_ceil(num, scale).ok_or_else(bad)?;
    u64::try_from(bytes).map_err(|_| bad())
}

/// A netem time in milliseconds: `5ms`, `1.5ms`, `200us`, `1s`, `0`.
pub fn duration_ms(s: &str) -> Result<f64, String> {
    let bad = || format!("\"{s}\" is not a duration (use 5ms, 200us or 1s)");
    let (num, unit) = split_number(s.trim());
    let factor = match unit {
        "ms" => 1.0,
        "us" => 0.001,
        "s" => 1000.0,
        "" if decimal(num) == Some((0, 0, 0)) || num == "0" => 1.0,
        _ => return Err(bad()),
    };
    decimal(num).ok_or_else(bad)?;
    let v: f64 = num.parse().map_err(|_| bad())?;
    let ms = v * factor;
    if ms > 60_000.0 {
        return Err(format!("\"{s}\" is longer than 60s"));
    }
    Ok(ms)
}

/// Longest pause between the attempts of a declared test.
pub const MAX_WAIT_MS: u64 = 600_000;

/// A pause between test attempts in milliseconds: `500ms`, `2s`, `1m`, or a bare number of seconds.
pub fn wait_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a duration (use 500ms, 2s or 1m)");
    let (num, unit) = split_number(s.trim());
    let scale: u128 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    let ms = scaled_ceil(num, scale).ok_or_else(bad)?;
    if ms > u128::from(MAX_WAIT_MS) {
        return Err(format!("\"{s}\" is longer than 10m"));
    }
    u64::try_from(ms).map_err(|_| bad())
}

/// Longest Kubernetes duration the topology takes (the controller manager's times).
pub const MAX_KUBE_DURATION_SECS: u64 = 86_400;

/// A Kubernetes duration (Go's `time.ParseDuration`, as the controller manager's flags take it) in whole
/// seconds: `40s`, `5m`, `1m30s`, `1.5m`, `1h`; units `h`, `m`, `s`, `ms`. A bare number is refused: Kubernetes
/// durations always carry a unit, and `40` could be meant as seconds or minutes. Fractions of a second are
/// refused too: the controller manager counts in seconds.
pub fn kube_duration_secs(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let bad = || format!("\"{s}\" is not a duration (use 40s, 5m or 1m30s)");
    if !text.is_empty() && decimal(text).is_some() {
        return Err(format!(
            "\"{s}\" has no unit: write {text}s or {text}m (a Kubernetes duration such as 40s, 5m or 1m30s)"
        ));
    }
    let mut rest = text;
    let mut total_ms: u128 = 0;
    while !rest.is_empty() {
        let (num, after) = split_number(rest);
        let unit_len = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let (int, frac, digits) = decimal(num).ok_or_else(bad)?;
        let frac_ms = frac * scale;
        if !frac_ms.is_multiple_of(10u128.pow(digits)) {
            return Err(format!("\"{s}\" is not a whole number of seconds"));
        }
        total_ms += int * scale + frac_ms / 10u128.pow(digits);
        if total_ms > u128::from(MAX_KUBE_DURATION_SECS) * 1000 {
            return Err(format!("\"{s}\" is longer than 24h"));
        }
        rest = next;
    }
    if text.is_empty() {
        return Err(bad());
    }
    if !total_ms.is_multiple_of(1000) {
        return Err(format!("\"{s}\" is not a whole number of seconds"));
    }
    u64::try_from(total_ms / 1000).map_err(|_| bad())
}

/// A loss percentage: `0.1%`, `5%`, `0`.
pub fn percent(s: &str) -> Result<f64, String> {
    let bad = || format!("\"{s}\" is not a percentage (use 0.1% or 5%)");
    let t = s.trim();
    let num = match t.strip_suffix('%') {
        Some(n) => n,
        None if t == "0" => t,
        None => return Err(bad()),
    };
    decimal(num).ok_or_else(bad)?;
    let v: f64 = num.parse().map_err(|_| bad())?;
    if v > 100.0 {
        return Err(format!("\"{s}\" is more than 100%"));
    }
    Ok(v)
}

/// A rate in whole Mbit/s: `100mbit`, `1gbit`, `500000kbit`.
pub fn rate_mbit(s: &str) -> Result<u64, String> {
    let bad = || format!("\"{s}\" is not a rate (use 100mbit or 1gbit)");
    let (num, unit) = split_number(s.trim());
    let kbit = match unit.to_ascii_lowercase().as_str() {
        "kbit" => scaled_ceil(num, 1),
        "mbit" => scaled_ceil(num, 1_000),
        "gbit" => scaled_ceil(num, 1_000_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    if kbit % 1000 != 0 || kbit == 0 {
        return Err(format!("\"{s}\" must be a whole, non-zero number of mbit"));
    }
    u64::try_from(kbit / 1000).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_memory() {
        assert_eq!(vm_memory_mib("1024M"), Ok(1024));
        assert_eq!(vm_memory_mib("2G"), Ok(2048));
        assert_eq!(vm_memory_mib("512Mi"), Ok(512));
        assert_eq!(vm_memory_mib("1.5G"), Ok(1536));
        assert_eq!(vm_memory_mib("768"), Ok(768));
        assert!(vm_memory_mib("12Q").unwrap_err().contains("not a memory size"));
        assert!(vm_memory_mib("M").is_err());
        assert!(vm_memory_mib("-1G").is_err());
    }

    #[test]
    fn kubernetes_cpu() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.001"), Ok(1));
        assert!(cpu_millis("0.0005").is_err());
        assert!(cpu_millis("1.5m").is_err());
        assert!(cpu_millis("1cpu").is_err());
        assert!(cpu_millis("").is_err());
    }

    #[test]
    fn kubernetes_memory() {
        assert_eq!(memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(memory_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(memory_bytes("128M"), Ok(128_000_000));
        assert_eq!(memory_bytes("1000"), Ok(1000));
        assert_eq!(memory_bytes("1.5Ki"), Ok(1536));
        assert!(memory_bytes("64MB").is_err());
        assert!(memory_bytes("lots").is_err());
    }

    #[test]
    fn netem_values() {
        assert_eq!(duration_ms("5ms"), Ok(5.0));
        assert_eq!(duration_ms("200us"), Ok(0.2));
        assert_eq!(duration_ms("1s"), Ok(1000.0));
        assert_eq!(duration_ms("0"), Ok(0.0));
        assert!(duration_ms("5").is_err());
        assert!(duration_ms("5 parsecs").is_err());
        assert_eq!(percent("0.1%"), Ok(0.1));
        assert_eq!(percent("0"), Ok(0.0));
        assert!(percent("0.1").is_err());
        assert!(percent("150%").is_err());
        assert_eq!(rate_mbit("100mbit"), Ok(100));
        assert_eq!(rate_mbit("1gbit"), Ok(1000));
        assert_eq!(rate_mbit("2000kbit"), Ok(2));
        assert!(rate_mbit("1500kbit").is_err());
        assert!(rate_mbit("100").is_err());
    }

    #[test]
    fn test_waits() {
        assert_eq!(wait_ms("500ms"), Ok(500));
        assert_eq!(wait_ms("2s"), Ok(2000));
        assert_eq!(wait_ms("1m"), Ok(60_000));
        assert_eq!(wait_ms("2"), Ok(2000));
        assert_eq!(wait_ms("0.25"), Ok(250));
        assert_eq!(wait_ms("0"), Ok(0));
        assert!(wait_ms("3h").unwrap_err().contains("not a duration"));
        assert!(wait_ms("11m").unwrap_err().contains("longer than 10m"));
        assert!(wait_ms("-1s").is_err());
        assert!(wait_ms("ms").is_err());
    }

    #[test]
    fn kubernetes_durations() {
        assert_eq!(kube_duration_secs("40s"), Ok(40));
        assert_eq!(kube_duration_secs("5m"), Ok(300));
        assert_eq!(kube_duration_secs("1m30s"), Ok(90));
        assert_eq!(kube_duration_secs("1.5m"), Ok(90));
        assert_eq!(kube_duration_secs("1h"), Ok(3600));
        assert_eq!(kube_duration_secs("2000ms"), Ok(2));
        assert_eq!(kube_duration_secs("0s"), Ok(0));
        assert!(kube_duration_secs("40").unwrap_err().contains("has no unit: write 40s"));
        assert!(kube_duration_secs("1.5s").unwrap_err().contains("not a whole number of seconds"));
        assert!(kube_duration_secs("1500ms").unwrap_err().contains("not a whole number of seconds"));
        assert!(kube_duration_secs("25h").unwrap_err().contains("longer than 24h"));
        for bad in ["", "s", "5d", "-5s", "5 s", "1m30", "m5"] {
            assert!(kube_duration_secs(bad).unwrap_err().contains("not a duration"), "{bad}");
        }
    }
}
