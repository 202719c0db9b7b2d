//! Netdevice features by name through the ethtool ioctl (`SIOCETHTOOL`), as `ethtool -K DEV NAME on|off` does:
//! the kernel's feature names (`ETH_SS_FEATURES` string set) give the bit, `ETHTOOL_GFEATURES` what the
//! device offers and has on, `ETHTOOL_SFEATURES` asks for it. The bits are looked up by name at run time
//! because their numbers differ between kernel versions.

use std::os::fd::{AsRawFd, OwnedFd};

use super::NetError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// What asking for a feature did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureChange {
    Changed,
    /// It was already as asked.
    Unchanged,
    /// The device does not offer it (`off [fixed]` in ethtool's words), or this kernel does not know it.
    NotOffered,
}

/// Turns feature `name` (e.g. `tx-udp-segmentation`) of `dev` on or off, in the calling thread's network
/// namespace.
pub fn set(dev: &str, name: &str, on: bool) -> Result<FeatureChange, NetError> {
    let sock = control_socket()?;
    let names = feature_names(&sock, dev)?;
    let Some(bit) = names.iter().position(|n| n == name) else { return Ok(FeatureChange::NotOffered) };
    let (word, mask) = (bit / 32, 1u32 << (bit % 32));
    let blocks = names.len().div_ceil(32);
    // struct ethtool_gfeatures: cmd, size, then per 32 features {available, requested, active, never_changed}.
    let mut get = vec![0u32; 2 + 4 * blocks];
    get[0] = ETHTOOL_GFEATURES;
    get[1] = blocks as u32;
    ioctl(&sock, dev, get.as_mut_ptr().cast(), "ETHTOOL_GFEATURES")?;
    let block = &get[2 + 4 * word..2 + 4 * word + 4];
    if block[0] & mask == 0 {
        return Ok(FeatureChange::NotOffered);
    }
    if (block[2] & mask != 0) == on {
        return Ok(FeatureChange::Unchanged);
    }
    // struct ethtool_sfeatures: cmd, size, then per 32 features {valid, requested}.
    let mut req = vec![0u32; 2 + 2 * blocks];
    req[0] = ETHTOOL_SFEATURES;
    req[1] = blocks as u32;
    req[2 + 2 * word] = mask;
    req[3 + 2 * word] = if on { mask } else { 0 };
    ioctl(&sock, dev, req.as_mut_ptr().cast(), "ETHTOOL_SFEATURES")?;
    Ok(FeatureChange::Changed)
}

/// The device's feature names in bit order.
fn feature_names(sock: &OwnedFd, dev: &str) -> Result<Vec<String>, NetError> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set asked for.
    let mut info = [0u32; 5];
    info[0] = ETHTOOL_GSSET_INFO;
    let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
    info[2] = u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]);
    info[3] = u32::from_ne_bytes([mask[4], mask[5], mask[6], mask[7]]);
    ioctl(sock, dev, info.as_mut_ptr().cast(), "ETHTOOL_GSSET_INFO")?;
    let count = info[4] as usize;
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut strings = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    strings[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
    strings[4..8].copy_from_slice(&ETH_SS_FEATURES.to_ne_bytes());
    strings[8..12].copy_from_slice(&(count as u32).to_ne_bytes());
    ioctl(sock, dev, strings.as_mut_ptr(), "ETHTOOL_GSTRINGS")?;
    Ok(parse_names(&strings[12..], count))
}

/// Names from a string table of fixed 32-byte, NUL-padded entries.
fn parse_names(table: &[u8], count: usize) -> Vec<String> {
    table
        .chunks(ETH_GSTRING_LEN)
        .take(count)
        .map(|s| String::from_utf8_lossy(&s[..s.iter().position(|b| *b == 0).unwrap_or(s.len())]).into_owned())
        .collect()
}

fn control_socket() -> Result<OwnedFd, NetError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| NetError::io("socket for ethtool".into(), e.into()))
}

/// `SIOCETHTOOL` on `dev` with `data` as the request (`ifr_data`).
fn ioctl(sock: &OwnedFd, dev: &str, data: *mut u8, what: &str) -> Result<(), NetError> {
    if dev.len() >= libc::IFNAMSIZ {
        return Err(NetError::InvalidInput(format!("interface name {dev:?} is too long")));
    }
    // struct ifreq: 16 bytes of name, then the union, whose ifr_data is a pointer.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut u8,
        pad: [u8; 16],
    }
    let mut ifr = IfReq { name: [0; libc::IFNAMSIZ], data, pad: [0; 16] };
    ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: `ifr` is a valid struct ifreq whose ifr_data points at a request buffer the caller sized for
    // the command (the kernel reads its length fields and never writes past them); both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr as *mut IfReq) };
    if rc < 0 {
        return Err(NetError::io(format!("{what} on {dev}"), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_up_to_their_nul_padding() {
        let mut table = vec![0u8; 3 * ETH_GSTRING_LEN];
        table[..2].copy_from_slice(b"sg");
        table[ETH_GSTRING_LEN..ETH_GSTRING_LEN + 19].copy_from_slice(b"tx-udp-segmentation");
        table[2 * ETH_GSTRING_LEN..3 * ETH_GSTRING_LEN].fill(b'x');
        assert_eq!(parse_names(&table, 3), ["sg", "tx-udp-segmentation", &"x".repeat(32)]);
        assert_eq!(parse_names(&table, 1), ["sg"]);
    }
}
