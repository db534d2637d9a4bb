//! virt-install's sized and structured options beyond `--disk`/`--network`: `--memory`,
//! `--vcpus`, `--check`, `--console`/`--serial`, `--autoconsole`. Each key is implemented or
//! refused by name; the syntax is checked here (clap reports it, exit 2), the values against the
//! rest of the definition later (`validate`, exit 1).

use std::path::PathBuf;
use std::str::FromStr;

use super::options::{split_kv, OptionError};

fn bad(opt: &'static str, key: &str, value: &str, why: impl Into<String>) -> OptionError {
    OptionError::BadValue { opt, key: key.into(), value: value.into(), why: why.into() }
}

fn unsupported(opt: &'static str, key: &str, input: &str, known: &'static str) -> OptionError {
    OptionError::Invalid {
        opt,
        input: input.into(),
        why: format!("has key '{key}', which kvmctl does not take (it takes {known})"),
    }
}

fn number<T: FromStr>(opt: &'static str, key: &str, v: Option<&str>, what: &str) -> Result<T, OptionError> {
    let v = v.ok_or_else(|| bad(opt, key, "", format!("needs a value ({key}=N)")))?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(opt, key, v, format!("is not {what}")));
    }
    // All digits, yet not a T: too large for it (T is u32 or u64 here).
    let max = if std::mem::size_of::<T>() == 4 { u64::from(u32::MAX) } else { u64::MAX };
    v.parse().map_err(|_| bad(opt, key, v, format!("is too large (at most {max})")))
}

/// `--memory N` or `--memory memory=N,currentMemory=N,maxmemory=N,maxMemory.slots=N` (MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySpec {
    pub memory: u64,
    pub current: Option<u64>,
    pub max: Option<u64>,
    pub slots: Option<u32>,
}

impl FromStr for MemorySpec {
    type Err = OptionError;
    fn from_str(input: &str) -> Result<Self, OptionError> {
        const O: &str = "memory";
        const KNOWN: &str = "memory=, currentMemory=, maxmemory=, maxMemory.slots=";
        const MIB: &str = "a whole number of MiB";
        let (mut memory, mut current, mut max, mut slots) = (None, None, None, None);
        for (i, (k, v)) in split_kv(input).into_iter().enumerate() {
            match k.as_str() {
                _ if i == 0 && v.is_none() => memory = Some(number(O, "memory", Some(&k), MIB)?),
                "memory" => memory = Some(number(O, &k, v.as_deref(), MIB)?),
                "currentMemory" => current = Some(number(O, &k, v.as_deref(), MIB)?),
                "maxmemory" | "maxMemory" => max = Some(number(O, &k, v.as_deref(), MIB)?),
                "maxMemory.slots" => slots = Some(number(O, &k, v.as_deref(), "a whole number of slots")?),
                _ => return Err(unsupported(O, &k, input, KNOWN)),
            }
        }
        let memory = memory.ok_or_else(|| OptionError::Invalid {
            opt: O,
            input: input.into(),
            why: "names no memory= (MiB)".into(),
        })?;
        Ok(MemorySpec { memory, current, max, slots })
    }
}

/// `--vcpus N` or `--vcpus N,maxvcpus=M,sockets=S,cores=C,threads=T` (any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuSpec {
    pub vcpus: Option<u32>,
    pub max: Option<u32>,
    pub sockets: Option<u32>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
}

/// What `--vcpus` resolves to: the count at boot, the maximum, the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpus {
    pub vcpus: u32,
    pub max: Option<u32>,
    pub topology: Option<super::definition::CpuTopology>,
}

impl FromStr for VcpuSpec {
    type Err = OptionError;
    fn from_str(input: &str) -> Result<Self, OptionError> {
        const O: &str = "vcpus";
        const KNOWN: &str = "vcpus=, maxvcpus=, sockets=, cores=, threads=";
        const N: &str = "a whole number";
        let mut s = VcpuSpec::default();
        for (i, (k, v)) in split_kv(input).into_iter().enumerate() {
            let n = |key: &str| number::<u32>(O, key, v.as_deref(), N);
            match k.as_str() {
                _ if i == 0 && v.is_none() => s.vcpus = Some(number(O, "vcpus", Some(&k), N)?),
                "vcpus" | "vcpu.current" => s.vcpus = Some(n(&k)?),
                "maxvcpus" => s.max = Some(n(&k)?),
                "sockets" | "cpu.topology.sockets" => s.sockets = Some(n(&k)?),
                "cores" | "cpu.topology.cores" => s.cores = Some(n(&k)?),
                "threads" | "cpu.topology.threads" => s.threads = Some(n(&k)?),
                _ => return Err(unsupported(O, &k, input, KNOWN)),
            }
        }
        if s == VcpuSpec::default() {
            return Err(OptionError::Invalid { opt: O, input: input.into(), why: "names no vCPU count".into() });
        }
        Ok(s)
    }
}

impl VcpuSpec {
    /// virt-install's defaults: a topology part not given is filled from the maximum (threads
    /// 1, then cores or sockets to make up the count); an unset count is the maximum (all
    /// vCPUs online), or the topology's product. The result is checked by `validate`.
    pub fn resolve(&self) -> Vcpus {
        use super::definition::CpuTopology;
        let wanted = self.max.or(self.vcpus);
        let topology = if self.sockets.is_some() || self.cores.is_some() || self.threads.is_some() {
            let threads = self.threads.unwrap_or(1);
            let rest = |known: u32| wanted.map(|w| (w / known.saturating_mul(threads).max(1)).max(1)).unwrap_or(1);
            let (sockets, cores) = match (self.sockets, self.cores) {
                (Some(s), Some(c)) => (s, c),
                (Some(s), None) => (s, rest(s)),
                (None, Some(c)) => (rest(c), c),
                (None, None) => (rest(1), 1),
            };
            Some(CpuTopology { sockets, cores, threads })
        } else {
            None
        };
        let product = topology.map(|t| t.sockets.saturating_mul(t.cores).saturating_mul(t.threads));
        let vcpus = self.vcpus.or(self.max).or(product).unwrap_or(1);
        Vcpus { vcpus, max: self.max, topology }
    }
}

/// virt-install's `--check`: the checks it makes by default, each of which can be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// A writable disk already used by another VM.
    pub path_in_use: bool,
    /// A new disk larger than the free space of its filesystem.
    pub disk_size: bool,
    /// A MAC address another VM has.
    pub mac_in_use: bool,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks { path_in_use: true, disk_size: true, mac_in_use: true }
    }
}

/// One `--check` value: `all=off`, `path_in_use=off,disk_size=on`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec(pub Vec<(String, bool)>);

impl FromStr for CheckSpec {
    type Err = OptionError;
    fn from_str(input: &str) -> Result<Self, OptionError> {
        const O: &str = "check";
        let mut out = Vec::new();
        for (k, v) in split_kv(input) {
            if !["all", "path_in_use", "disk_size", "mac_in_use"].contains(&k.as_str()) {
                return Err(OptionError::Invalid {
                    opt: O,
                    input: input.into(),
                    why: format!("names check '{k}', which kvmctl does not make (it makes path_in_use, disk_size, mac_in_use; all= sets them all)"),
                });
            }
            let on = match v.as_deref() {
                None | Some("on" | "yes" | "true" | "1") => true,
                Some("off" | "no" | "false" | "0") => false,
                Some(other) => return Err(bad(O, &k, other, "use on or off")),
            };
            out.push((k, on));
        }
        Ok(CheckSpec(out))
    }
}

impl Checks {
    /// The checks after each `--check` in order (a later key overrides an earlier one).
    pub fn from_specs(specs: &[CheckSpec]) -> Checks {
        let mut c = Checks::default();
        for (k, on) in specs.iter().flat_map(|s| s.0.iter()) {
            match k.as_str() {
                "all" => c = Checks { path_in_use: *on, disk_size: *on, mac_in_use: *on },
                "path_in_use" => c.path_in_use = *on,
                "disk_size" => c.disk_size = *on,
                _ => c.mac_in_use = *on,
            }
        }
        c
    }
}

/// `--console` / `--serial`: the guest's one serial console. `pty` is what kvmctl always
/// gives (the supervisor holds it; `kvmctl console` attaches); `file,path=P` also copies its
/// output to P.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleSpec {
    Pty,
    File(PathBuf),
}

impl ConsoleSpec {
    pub fn parse(opt: &'static str, input: &str) -> Result<ConsoleSpec, OptionError> {
        let items = split_kv(input);
        let invalid = |why: String| OptionError::Invalid { opt, input: input.into(), why };
        let ty = match items.first() {
            Some((k, None)) => k.as_str(),
            Some((k, Some(v))) if k == "type" => v.as_str(),
            _ => return Err(invalid("names no type (pty, or file,path=FILE)".into())),
        };
        let rest = &items[1..];
        match ty {
            "pty" => {
                if let Some((k, _)) = rest.iter().find(|(k, _)| k != "target.type" && k != "target_type") {
                    return Err(unsupported(opt, k, input, "no keys with pty"));
                }
                Ok(ConsoleSpec::Pty)
            }
            "file" => {
                let mut path = None;
                for (k, v) in rest {
                    match (k.as_str(), v) {
                        ("path" | "source.path", Some(p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                        ("path" | "source.path", _) => return Err(bad(opt, k, "", "needs a file path")),
                        _ => return Err(unsupported(opt, k, input, "path= with file")),
                    }
                }
                let p = path.ok_or_else(|| invalid("file needs path=FILE".into()))?;
                Ok(ConsoleSpec::File(p))
            }
            "unix" => Err(invalid(
                "is not offered: the supervisor holds the serial console's socket itself (it writes console.log and \
                 serves `kvmctl console VM`, which any number of clients may watch); use pty (attach with kvmctl \
                 console) or file,path=FILE"
                    .into(),
            )),
            other => Err(invalid(format!("type '{other}' is not offered (kvmctl gives pty, or file,path=FILE)"))),
        }
    }
}

/// `--autoconsole text|none` (graphical is refused: kvmctl has no viewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoConsole {
    Text,
    None,
}

impl FromStr for AutoConsole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(AutoConsole::Text),
            "none" => Ok(AutoConsole::None),
            "graphical" => Err("graphical is not offered: kvmctl has no viewer (use --graphics vnc and a VNC client, \
                               with --autoconsole none or text)"
                .into()),
            other => Err(format!("'{other}': use text or none")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definition::CpuTopology;

    #[test]
    fn memory_takes_a_number_or_virt_install_keys() {
        let m: MemorySpec = "1024".parse().unwrap();
        assert_eq!(m, MemorySpec { memory: 1024, current: None, max: None, slots: None });
        let m: MemorySpec = "memory=512,currentMemory=512,maxmemory=2048,maxMemory.slots=4".parse().unwrap();
        assert_eq!(m, MemorySpec { memory: 512, current: Some(512), max: Some(2048), slots: Some(4) });
        let e = "memory=512,hugepages=on".parse::<MemorySpec>().unwrap_err().to_string();
        assert_eq!(
            e,
            "--memory: 'memory=512,hugepages=on' has key 'hugepages', which kvmctl does not take (it takes memory=, \
             currentMemory=, maxmemory=, maxMemory.slots=)"
        );
        let e = "99999999999999999999".parse::<MemorySpec>().unwrap_err().to_string();
        assert_eq!(
            e,
            "--memory: memory='99999999999999999999' is not valid: is too large (at most 18446744073709551615)"
        );
        let e = "memory=1G".parse::<MemorySpec>().unwrap_err().to_string();
        assert_eq!(e, "--memory: memory='1G' is not valid: is not a whole number of MiB");
        assert!("maxmemory=2048".parse::<MemorySpec>().unwrap_err().to_string().contains("names no memory="));
    }

    #[test]
    fn vcpus_take_a_count_topology_and_maximum() {
        let v: VcpuSpec = "4".parse().unwrap();
        assert_eq!(v.resolve(), Vcpus { vcpus: 4, max: None, topology: None });
        let v: VcpuSpec = "2,sockets=1,cores=2,threads=2,maxvcpus=4".parse().unwrap();
        let t = CpuTopology { sockets: 1, cores: 2, threads: 2 };
        assert_eq!(v.resolve(), Vcpus { vcpus: 2, max: Some(4), topology: Some(t) });
        // virt-install's defaults: the count from the topology, the missing parts from the count.
        let v: VcpuSpec = "sockets=2,cores=2".parse().unwrap();
        let t = CpuTopology { sockets: 2, cores: 2, threads: 1 };
        assert_eq!(v.resolve(), Vcpus { vcpus: 4, max: None, topology: Some(t) });
        let v: VcpuSpec = "4,sockets=2".parse().unwrap();
        assert_eq!(v.resolve().topology, Some(CpuTopology { sockets: 2, cores: 2, threads: 1 }));
        let v: VcpuSpec = "maxvcpus=8".parse().unwrap();
        assert_eq!(v.resolve(), Vcpus { vcpus: 8, max: Some(8), topology: None });
        let e = "2,cpuset=1-4".parse::<VcpuSpec>().unwrap_err().to_string();
        assert!(e.contains("key 'cpuset', which kvmctl does not take"), "{e}");
        let e = "2,sockets=two".parse::<VcpuSpec>().unwrap_err().to_string();
        assert_eq!(e, "--vcpus: sockets='two' is not valid: is not a whole number");
    }

    #[test]
    fn checks_default_on_and_turn_off_by_name() {
        assert_eq!(Checks::from_specs(&[]), Checks::default());
        let specs: Vec<CheckSpec> = vec!["all=off".parse().unwrap(), "mac_in_use=on".parse().unwrap()];
        assert_eq!(Checks::from_specs(&specs), Checks { path_in_use: false, disk_size: false, mac_in_use: true });
        let c = Checks::from_specs(&["path_in_use=off,disk_size=off".parse().unwrap()]);
        assert_eq!(c, Checks { path_in_use: false, disk_size: false, mac_in_use: true });
        let e = "path_exists=off".parse::<CheckSpec>().unwrap_err().to_string();
        assert!(e.contains("names check 'path_exists', which kvmctl does not make"), "{e}");
        let e = "disk_size=maybe".parse::<CheckSpec>().unwrap_err().to_string();
        assert_eq!(e, "--check: disk_size='maybe' is not valid: use on or off");
    }

    #[test]
    fn console_takes_pty_and_file_and_refuses_the_rest_by_name() {
        assert_eq!(ConsoleSpec::parse("console", "pty").unwrap(), ConsoleSpec::Pty);
        assert_eq!(ConsoleSpec::parse("serial", "pty,target.type=serial").unwrap(), ConsoleSpec::Pty);
        assert_eq!(
            ConsoleSpec::parse("console", "file,path=/tmp/a,,b.log").unwrap(),
            ConsoleSpec::File("/tmp/a,b.log".into())
        );
        let e = ConsoleSpec::parse("console", "unix,path=/tmp/s").unwrap_err().to_string();
        assert!(e.starts_with("--console: 'unix,path=/tmp/s' is not offered: the supervisor holds"), "{e}");
        let e = ConsoleSpec::parse("serial", "tcp,host=0:4555").unwrap_err().to_string();
        assert!(e.contains("type 'tcp' is not offered"), "{e}");
        let e = ConsoleSpec::parse("console", "file").unwrap_err().to_string();
        assert!(e.contains("file needs path=FILE"), "{e}");
        let e = ConsoleSpec::parse("console", "file,path=/x,append=on").unwrap_err().to_string();
        assert!(e.contains("key 'append'"), "{e}");
    }

    #[test]
    fn autoconsole_is_text_or_none() {
        assert_eq!("text".parse::<AutoConsole>(), Ok(AutoConsole::Text));
        assert_eq!("none".parse::<AutoConsole>(), Ok(AutoConsole::None));
        assert!("graphical".parse::<AutoConsole>().unwrap_err().contains("no viewer"));
    }
}
