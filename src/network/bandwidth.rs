//! A network's `<bandwidth>` in the kernel's units (pure; no I/O).
//!
//! libvirt's virNetDevBandwidthSet puts a network's limits on its bridge with `tc`:
//! inbound (toward the guests: the bridge's egress) is shaped by an HTB class, outbound (from
//! the guests: what the bridge hands to the host) is policed — dropped above the rate. kvmctl
//! shapes inbound the same way, over netlink (`netlink::tc`), and polices outbound with an
//! nftables `limit rate over … drop` in the network's own table (`firewall`): the same token
//! bucket as tc's policer, in the table that is created and deleted with the network, and it
//! needs no tc action module (kernels built without `act_police` are common in VMs).

use super::definition::{Bandwidth, Rate};

/// The kernel's scheduler tick (PSCHED_SHIFT = 6): HTB's buffer sizes are given as the time,
/// in 64 ns ticks, that they take to send at the rate.
const TICK_NS: f64 = 64.0;
/// tc's default burst beyond one timer tick (`rate / HZ + mtu`, HZ 1000, mtu 1600).
const TC_DEFAULT_MTU: u64 = 1600;

/// Inbound: an HTB class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per second.
    pub rate: u32,
    /// Bytes per second (HTB's ceil; the rate when there is no peak).
    pub ceil: u32,
    /// HTB's buffer: the burst, in scheduler ticks at `rate`.
    pub burst_ticks: u32,
    /// HTB's cbuffer, in ticks at `ceil`.
    pub cburst_ticks: u32,
}

/// Outbound: a policer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Police {
    /// Bytes per second.
    pub rate: u32,
    /// The bucket, in bytes: the burst asked for, but never less than one second of `rate`
    /// (nftables' byte limit always holds a second's worth; see [`Police::nft_burst`]).
    pub burst: u32,
    /// The burst the definition asked for, in bytes.
    pub asked: u32,
}

impl Police {
    /// The `burst` of nft's `limit rate over R bytes/second burst B bytes`. The kernel's
    /// nft_limit fills its bucket to `rate * 1 s + burst` (nft_limit_init: tokens =
    /// nsecs * (rate + burst) / rate), so the burst nft is given is the bucket less a second.
    pub fn nft_burst(&self) -> u32 {
        self.burst - self.rate
    }

    /// Whether the asked burst was below one second of the rate and so was raised to it.
    pub fn raised(&self) -> bool {
        self.asked < self.burst
    }
}

/// Both directions of a `<bandwidth>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub inbound: Option<Shape>,
    pub outbound: Option<Police>,
}

fn ticks(bytes: u64, rate: u32) -> Option<u32> {
    let t = (bytes as f64 / rate as f64 * 1e9 / TICK_NS).ceil();
    (t <= u32::MAX as f64).then_some(t as u32)
}

/// A rate in libvirt's kilobytes per second (tc's `kbps`: 1000 bytes) as bytes per second.
fn bytes_per_second(tag: &str, what: &str, v: u64) -> Result<u32, String> {
    match v.checked_mul(1000).and_then(|b| u32::try_from(b).ok()) {
        Some(0) => Err(format!("<{tag} {what}='0'> limits to nothing; leave <{tag}> out for no limit")),
        Some(b) => Ok(b),
        None => Err(format!(
            "<{tag} {what}='{v}'> is above the kernel's 32-bit rate ({} kilobytes per second, about 34 Gbit/s)",
            u32::MAX / 1000
        )),
    }
}

fn burst_bytes(tag: &str, r: &Rate) -> Result<Option<u64>, String> {
    match r.burst {
        Some(0) => Err(format!("<{tag} burst='0'> lets no packet through; leave burst out for the default")),
        Some(kib) => Ok(Some(kib.saturating_mul(1024))),
        None => Ok(None),
    }
}

fn shape(r: &Rate) -> Result<Shape, String> {
    let rate = bytes_per_second("inbound", "average", r.average)?;
    let ceil = match r.peak {
        Some(p) if p < r.average => {
            return Err(format!(
                "<inbound peak='{p}'> is below its average ({}): the peak is the upper limit",
                r.average
            ))
        }
        Some(p) => bytes_per_second("inbound", "peak", p)?,
        None => rate,
    };
    let given = burst_bytes("inbound", r)?;
    let too_long = |at: u32| {
        format!(
            "<inbound burst='{}'> takes longer than the kernel can count (274 s) to send at {at} bytes/s",
            r.burst.unwrap_or(0)
        )
    };
    let burst = given.unwrap_or(u64::from(rate) / 1000 + TC_DEFAULT_MTU);
    let cburst = given.unwrap_or(u64::from(ceil) / 1000 + TC_DEFAULT_MTU);
    Ok(Shape {
        rate,
        ceil,
        burst_ticks: ticks(burst, rate).ok_or_else(|| too_long(rate))?,
        cburst_ticks: ticks(cburst, ceil).ok_or_else(|| too_long(ceil))?,
    })
}

fn police(r: &Rate) -> Result<Police, String> {
    if let Some(p) = r.peak {
        return Err(format!(
            "<outbound peak='{p}'>: traffic from the guests is policed at one rate (its average), as libvirt does; leave peak out"
        ));
    }
    let rate = bytes_per_second("outbound", "average", r.average)?;
    // libvirt's default burst: the average's number, in KiB (about a second's worth).
    let burst = burst_bytes("outbound", r)?.unwrap_or(r.average.saturating_mul(1024));
    let too_big =
        || format!("<outbound burst='{}'> is above the policer's 32-bit burst (4 GiB)", r.burst.unwrap_or(r.average));
    let asked = u32::try_from(burst).map_err(|_| too_big())?;
    Ok(Police { rate, burst: asked.max(rate), asked })
}

/// What the kernel is given for `bw`; the error says which value it cannot take and why.
pub fn plan(bw: &Bandwidth) -> Result<Plan, String> {
    if bw.inbound.is_none() && bw.outbound.is_none() {
        return Err("an empty <bandwidth> limits nothing: give it <inbound> or <outbound>".into());
    }
    Ok(Plan {
        inbound: bw.inbound.as_ref().map(shape).transpose()?,
        outbound: bw.outbound.as_ref().map(police).transpose()?,
    })
}

/// The HTB class of a definition's `<bandwidth><inbound>` (validated at define: a plan that
/// fails is no limit).
pub fn inbound(def: &super::definition::NetworkDef) -> Option<Shape> {
    def.bandwidth.as_ref().and_then(|bw| plan(bw).ok()).and_then(|p| p.inbound)
}

/// The policer of a definition's `<bandwidth><outbound>` (validated, as [`inbound`]).
pub fn outbound(def: &super::definition::NetworkDef) -> Option<Police> {
    def.bandwidth.as_ref().and_then(|bw| plan(bw).ok()).and_then(|p| p.outbound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(average: u64, peak: Option<u64>, burst: Option<u64>) -> Option<Rate> {
        Some(Rate { average, peak, burst })
    }

    #[test]
    fn libvirt_units_become_bytes_and_ticks() {
        let bw = Bandwidth { inbound: rate(1000, Some(2000), Some(256)), outbound: rate(500, None, None) };
        let p = plan(&bw).unwrap();
        let i = p.inbound.unwrap();
        assert_eq!((i.rate, i.ceil), (1_000_000, 2_000_000));
        // 256 KiB at 1 MB/s: 0.262144 s = 4096000 ticks of 64 ns; at the 2 MB/s peak, half.
        assert_eq!((i.burst_ticks, i.cburst_ticks), (4_096_000, 2_048_000));
        // tc's default burst: rate / 1000 + 1600 bytes = 2600 bytes at 1 MB/s.
        let d = plan(&Bandwidth { inbound: rate(1000, None, None), outbound: None }).unwrap().inbound.unwrap();
        assert_eq!(d.burst_ticks, 40_625);
        // libvirt's default outbound burst: 500 KiB for 500 kB/s.
        let o = p.outbound.unwrap();
        assert_eq!(o, Police { rate: 500_000, burst: 512_000, asked: 512_000 });
        // nft's bucket is a second at the rate plus its burst: 500 000 + 12 000 bytes.
        assert_eq!((o.nft_burst(), o.raised()), (12_000, false));
        // A burst below a second's worth cannot be had from nft: raised to the second.
        let small = plan(&Bandwidth { inbound: None, outbound: rate(200, None, Some(64)) }).unwrap().outbound.unwrap();
        assert_eq!(small, Police { rate: 200_000, burst: 200_000, asked: 65_536 });
        assert_eq!((small.nft_burst(), small.raised()), (0, true));
    }

    #[test]
    fn values_the_kernel_cannot_take_are_refused_with_the_reason() {
        for (bw, why) in [
            (Bandwidth::default(), "empty <bandwidth>"),
            (Bandwidth { inbound: rate(0, None, None), outbound: None }, "<inbound average='0'>"),
            (Bandwidth { inbound: None, outbound: rate(0, None, None) }, "<outbound average='0'>"),
            (Bandwidth { inbound: rate(5_000_000, None, None), outbound: None }, "32-bit rate"),
            (Bandwidth { inbound: rate(100, Some(50), None), outbound: None }, "below its average"),
            (Bandwidth { inbound: None, outbound: rate(100, Some(200), None) }, "<outbound peak='200'>"),
            (Bandwidth { inbound: rate(1, None, Some(1 << 20)), outbound: None }, "274 s"),
            (Bandwidth { inbound: rate(1, None, Some(0)), outbound: None }, "burst='0'"),
            (Bandwidth { inbound: None, outbound: rate(10, None, Some(5 << 20)) }, "4 GiB"),
        ] {
            let e = plan(&bw).unwrap_err();
            assert!(e.contains(why), "{bw:?}: {e}");
        }
    }
}
