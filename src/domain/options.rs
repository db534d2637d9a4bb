//! virt-install's key=value option syntax: `--disk path=/x,,y.img,size=5,bus=sata`.
//! `,,` is a literal comma. Errors name the option, the key and the value.

use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

use super::definition::{CacheMode, DiskBus, DiskDevice, DiskFormat, NicModel};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("--{opt}: unknown key '{key}' in '{input}'")]
    UnknownKey { opt: &'static str, key: String, input: String },
    #[error("--{opt}: {key}='{value}' is not valid: {why}")]
    BadValue { opt: &'static str, key: String, value: String, why: String },
    #[error("--{opt}: '{input}' {why}")]
    Invalid { opt: &'static str, input: String, why: String },
}

/// Split `a=1,b,,c=2,d` into `[(a, Some(1)), (b,c... )]` honouring `,,` as a literal comma.
pub fn split_kv(input: &str) -> Vec<(String, Option<String>)> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
                continue;
            }
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (s, None),
        })
        .collect()
}

fn bad(opt: &'static str, key: &str, value: &str, why: impl Into<String>) -> OptionError {
    OptionError::BadValue { opt, key: key.into(), value: value.into(), why: why.into() }
}

/// `size=`: GiB (decimals allowed, as virt-install), in bytes; a size of 2^64 bytes or more is
/// too large (never saturated into a smaller one).
fn size_gib(v: &str) -> Result<u64, OptionError> {
    let n: f64 = v.parse().map_err(|_| bad("disk", "size", v, "a size in GiB, like 5 or 0.5"))?;
    if n.is_nan() || n <= 0.0 {
        return Err(bad("disk", "size", v, "must be greater than 0"));
    }
    let bytes = n * (1u64 << 30) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad("disk", "size", v, "too large (a size must be less than 16 EiB = 17179869184 GiB)"));
    }
    Ok(bytes as u64)
}

fn on_off(opt: &'static str, key: &str, v: Option<&str>) -> Result<bool, OptionError> {
    match v.unwrap_or("on") {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        other => Err(bad(opt, key, other, "use on or off")),
    }
}

/// Where a `--disk` comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskSource {
    /// `path=P` (created with `size=` when missing).
    Path(PathBuf),
    /// `vol=POOL/NAME`.
    Volume { pool: String, name: String },
    /// `pool=P,size=N` or a bare `size=N`: a new volume named after the VM.
    NewVolume { pool: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    pub source: DiskSource,
    /// Bytes; given in GiB, as virt-install takes it (decimals allowed).
    pub size: Option<u64>,
    pub format: Option<DiskFormat>,
    pub bus: Option<DiskBus>,
    pub device: DiskDevice,
    pub cache: Option<CacheMode>,
    pub readonly: bool,
    pub shareable: bool,
    pub backing_store: Option<String>,
    pub backing_format: Option<DiskFormat>,
}

/// `format=` and `backing_format=`: the formats kvmctl opens (qemu's other drivers are not
/// offered; a value like `raw,file=/x` never reaches qemu).
fn disk_format(key: &str, v: &str) -> Result<DiskFormat, OptionError> {
    match v {
        "raw" => Ok(DiskFormat::Raw),
        "qcow2" => Ok(DiskFormat::Qcow2),
        _ => Err(bad("disk", key, v, "one of raw, qcow2")),
    }
}

impl FromStr for DiskSpec {
    type Err = OptionError;
    fn from_str(input: &str) -> Result<Self, OptionError> {
        const O: &str = "disk";
        let mut spec = DiskSpec {
            source: DiskSource::NewVolume { pool: "default".into() },
            size: None,
            format: None,
            bus: None,
            device: DiskDevice::Disk,
            cache: None,
            readonly: false,
            shareable: false,
            backing_store: None,
            backing_format: None,
        };
        let mut source = None;
        for (i, (k, v)) in split_kv(input).into_iter().enumerate() {
            let val = || v.clone().ok_or_else(|| bad(O, &k, "", "needs a value"));
            match k.as_str() {
                // virt-install takes a bare first item as the path.
                _ if v.is_none() && i == 0 && k != "none" => source = Some(DiskSource::Path(k.clone().into())),
                "path" => source = Some(DiskSource::Path(val()?.into())),
                "vol" => {
                    let v = val()?;
                    let (pool, name) = v.split_once('/').ok_or_else(|| bad(O, "vol", &v, "use vol=POOL/NAME"))?;
                    source = Some(DiskSource::Volume { pool: pool.into(), name: name.into() });
                }
                "pool" => source = Some(DiskSource::NewVolume { pool: val()? }),
                "size" => {
                    let v = val()?;
                    spec.size = Some(size_gib(&v)?);
                }
                "format" => spec.format = Some(disk_format("format", &val()?)?),
                "bus" => {
                    let v = val()?;
                    spec.bus = Some(match v.as_str() {
                        "virtio" => DiskBus::Virtio,
                        "sata" => DiskBus::Sata,
                        "scsi" => DiskBus::Scsi,
                        "ide" => DiskBus::Ide,
                        _ => return Err(bad(O, "bus", &v, "one of virtio, sata, scsi, ide")),
                    })
                }
                "device" => {
                    let v = val()?;
                    spec.device = match v.as_str() {
                        "disk" => DiskDevice::Disk,
                        "cdrom" => DiskDevice::Cdrom,
                        _ => return Err(bad(O, "device", &v, "one of disk, cdrom")),
                    }
                }
                "cache" => {
                    let v = val()?;
                    spec.cache = CacheMode::parse_or_default(&v)
                        .map_err(|_| bad(O, "cache", &v, format!("one of {}, default", CacheMode::ALLOWED)))?;
                }
                "readonly" => spec.readonly = on_off(O, &k, v.as_deref())?,
                "shareable" => spec.shareable = on_off(O, &k, v.as_deref())?,
                "sparse" => {
                    on_off(O, &k, v.as_deref())?;
                }
                "backing_store" => spec.backing_store = Some(val()?),
                "backing_format" => spec.backing_format = Some(disk_format("backing_format", &val()?)?),
                _ => return Err(OptionError::UnknownKey { opt: O, key: k, input: input.into() }),
            }
        }
        if let Some(s) = source {
            spec.source = s;
        } else if spec.size.is_none() {
            return Err(OptionError::Invalid {
                opt: O,
                input: input.into(),
                why: "names no path=, vol= or size=".into(),
            });
        }
        if matches!(spec.source, DiskSource::NewVolume { .. }) && spec.size.is_none() {
            return Err(OptionError::Invalid {
                opt: O,
                input: input.into(),
                why: "creates a volume: give size= (GiB)".into(),
            });
        }
        Ok(spec)
    }
}

/// `--network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetKind {
    Network(String),
    Bridge(String),
    User,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub kind: NetKind,
    pub model: NicModel,
    pub mac: Option<String>,
    /// `hostfwd=tcp::2222-:22` (repeatable; user-mode NICs).
    pub hostfwd: Vec<super::definition::HostFwd>,
}

impl FromStr for NetSpec {
    type Err = OptionError;
    fn from_str(input: &str) -> Result<Self, OptionError> {
        const O: &str = "network";
        let mut spec =
            NetSpec { kind: NetKind::Network("default".into()), model: NicModel::Virtio, mac: None, hostfwd: vec![] };
        let mut kind = None;
        for (k, v) in split_kv(input) {
            let val = || v.clone().ok_or_else(|| bad(O, &k, "", "needs a value"));
            match (k.as_str(), v.is_some()) {
                ("network", true) => kind = Some(NetKind::Network(val()?)),
                ("bridge", true) => kind = Some(NetKind::Bridge(val()?)),
                ("user", false) | ("type", true) if v.as_deref().unwrap_or("user") == "user" => {
                    kind = Some(NetKind::User)
                }
                ("none", false) => kind = Some(NetKind::None),
                ("default", false) => kind = Some(NetKind::Network("default".into())),
                ("model" | "model.type", true) => {
                    let v = val()?;
                    spec.model = match v.as_str() {
                        "virtio" => NicModel::Virtio,
                        "e1000" => NicModel::E1000,
                        "rtl8139" => NicModel::Rtl8139,
                        _ => return Err(bad(O, &k, &v, "one of virtio, e1000, rtl8139")),
                    }
                }
                ("mac" | "mac.address", true) => spec.mac = Some(val()?),
                ("hostfwd", true) => {
                    let v = val()?;
                    spec.hostfwd
                        .push(v.parse().map_err(|e: super::definition::HostFwdError| bad(O, &k, &v, e.reason))?);
                }
                _ => return Err(OptionError::UnknownKey { opt: O, key: k, input: input.into() }),
            }
        }
        if let Some(k) = kind {
            spec.kind = k;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_comma_is_a_literal_comma() {
        assert_eq!(
            split_kv("path=/a,,b.img,size=5"),
            vec![("path".into(), Some("/a,b.img".into())), ("size".into(), Some("5".into()))]
        );
    }

    #[test]
    fn disk_specs_like_virt_install() {
        let d: DiskSpec = "path=/x.qcow2,size=5,format=qcow2,bus=sata,cache=none".parse().unwrap();
        assert_eq!(d.source, DiskSource::Path("/x.qcow2".into()));
        assert_eq!((d.size, d.bus, d.cache), (Some(5 << 30), Some(DiskBus::Sata), Some(CacheMode::None)));
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        assert_eq!("path=/x,cache=default".parse::<DiskSpec>().unwrap().cache, None);
        let d: DiskSpec = "vol=default/tiny.qcow2".parse().unwrap();
        assert_eq!(d.source, DiskSource::Volume { pool: "default".into(), name: "tiny.qcow2".into() });
        let d: DiskSpec = "size=1".parse().unwrap();
        assert_eq!(d.source, DiskSource::NewVolume { pool: "default".into() });
        let d: DiskSpec = "/iso/x.iso,device=cdrom,readonly=on".parse().unwrap();
        assert_eq!((d.device, d.readonly), (DiskDevice::Cdrom, true));
    }

    #[test]
    fn malformed_disk_options_name_key_and_value() {
        let e = "path=/x,sise=3".parse::<DiskSpec>().unwrap_err().to_string();
        assert_eq!(e, "--disk: unknown key 'sise' in 'path=/x,sise=3'");
        let e = "path=/x,bus=usb".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("bus='usb'") && e.contains("virtio, sata, scsi, ide"), "{e}");
        let e = "size=-1".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("size='-1'"), "{e}");
        assert_eq!("size=0.5".parse::<DiskSpec>().unwrap().size, Some(1 << 29));
        assert_eq!("size=17179869183".parse::<DiskSpec>().unwrap().size, Some(17179869183 << 30));
        for too_large in ["1e30", "17179869184", "inf", "99999999999999999999999"] {
            let e = format!("size={too_large}").parse::<DiskSpec>().unwrap_err().to_string();
            assert_eq!(e, format!("--disk: size='{too_large}' is not valid: too large (a size must be less than 16 EiB = 17179869184 GiB)"));
        }
        let e = "size=NaN".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.ends_with("must be greater than 0"), "{e}");
        assert!("pool=default".parse::<DiskSpec>().is_err());
        assert!("vol=nopoolslash".parse::<DiskSpec>().unwrap_err().to_string().contains("vol=POOL/NAME"));
    }

    /// Issue 10: `,,` is a literal comma, so `format=raw,,file=/etc/shadow` is one value that
    /// used to reach qemu as `format=raw,file=/etc/shadow`.
    #[test]
    fn option_values_holding_a_comma_are_refused() {
        let e = "path=/tmp/d.qcow2,format=raw,,file=/etc/shadow".parse::<DiskSpec>().unwrap_err().to_string();
        assert_eq!(e, "--disk: format='raw,file=/etc/shadow' is not valid: one of raw, qcow2");
        let e = "path=/x,cache=none,,file=/etc/shadow".parse::<DiskSpec>().unwrap_err().to_string();
        assert_eq!(
            e,
            "--disk: cache='none,file=/etc/shadow' is not valid: one of none, writeback, writethrough, unsafe, directsync, default"
        );
        let e = "size=1,backing_store=b,backing_format=qcow2,,x".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("backing_format='qcow2,x'"), "{e}");
        let e = "path=/x,bus=virtio,,y".parse::<DiskSpec>().unwrap_err().to_string();
        assert!(e.contains("bus='virtio,y'"), "{e}");
        let e = "network=default,model=virtio,,x".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("model='virtio,x'"), "{e}");
    }

    #[test]
    fn network_specs_like_virt_install() {
        let n: NetSpec = "network=default,model=e1000,mac=52:54:00:aa:bb:cc".parse().unwrap();
        assert_eq!(
            (n.kind, n.model, n.mac.as_deref()),
            (NetKind::Network("default".into()), NicModel::E1000, Some("52:54:00:aa:bb:cc"))
        );
        assert_eq!("bridge=br0,model.type=virtio".parse::<NetSpec>().unwrap().kind, NetKind::Bridge("br0".into()));
        assert_eq!("user".parse::<NetSpec>().unwrap().kind, NetKind::User);
        let f = "user,hostfwd=tcp::2222-:22,hostfwd=udp:0.0.0.0:53-:53".parse::<NetSpec>().unwrap().hostfwd;
        assert_eq!(
            f.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            ["tcp:127.0.0.1:2222-:22", "udp:0.0.0.0:53-:53"]
        );
        assert!("user,hostfwd=tcp::0-:22".parse::<NetSpec>().unwrap_err().to_string().contains("1 to 65535"));
        assert_eq!("none".parse::<NetSpec>().unwrap().kind, NetKind::None);
        let e = "network=default,model=ne2k".parse::<NetSpec>().unwrap_err().to_string();
        assert!(e.contains("model='ne2k'"), "{e}");
        assert!("netwrk=x".parse::<NetSpec>().unwrap_err().to_string().contains("unknown key 'netwrk'"));
    }
}
