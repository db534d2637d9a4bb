//! The inbound half of a network's `<bandwidth>` on its bridge, over netlink, as libvirt's
//! virNetDevBandwidthSet sets it with `tc`: `qdisc root 1: htb default 1`, `class 1:1 htb
//! rate AVERAGE [ceil PEAK] [burst BURST]`, and `qdisc 2: sfq perturb 10` under it where the
//! kernel has sfq (else the class keeps the kernel's default fifo: `net-start` says so). The
//! outbound half is a policer in the network's nft table (`super::super::bandwidth`).
//!
//! The messages are built here because netlink-packet-route has no HTB or SFQ options: each
//! is the kernel's own struct (`linux/pkt_sched.h`). Applying starts by deleting the root
//! qdisc, so it is safe to run again over a half-done or changed one; deleting the bridge
//! takes it with it.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{is_errno, op, Netlink, NetlinkError};
use crate::network::bandwidth::Shape;

const TC_LINKLAYER_ETHERNET: u8 = 1;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const ROOT: u32 = 0xffff_ffff;
const HTB_QDISC: u32 = 0x0001_0000;
const HTB_CLASS: u32 = 0x0001_0001;
const SFQ_QDISC: u32 = 0x0002_0000;

/// A netlink attribute: header, value, padding to 4 bytes.
fn nla(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// `struct tc_ratespec` (12 bytes). An Ethernet link layer: the kernel then needs no rate
/// table (it computes the times itself).
fn ratespec(out: &mut Vec<u8>, rate: u32) {
    out.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET]); // cell_log, linklayer
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&(-1i16).to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    out.extend_from_slice(&rate.to_ne_bytes());
}

/// `struct tc_htb_glob`: version 3, rate2quantum 10, default class 1.
fn htb_qdisc_options() -> Vec<u8> {
    let mut o = vec![];
    nla(&mut o, TCA_HTB_INIT, &u32s(&[3, 10, 1, 0, 0]));
    o
}

/// `struct tc_htb_opt` for class 1:1. The quantum is set (rate / 10, within the kernel's
/// 1000..200000) so that the kernel has nothing to warn about.
fn htb_class_options(s: &Shape) -> Vec<u8> {
    let mut p = vec![];
    ratespec(&mut p, s.rate);
    ratespec(&mut p, s.ceil);
    let quantum = (s.rate / 10).clamp(1000, 200_000);
    p.extend_from_slice(&u32s(&[s.burst_ticks, s.cburst_ticks, quantum, 0, 0]));
    let mut o = vec![];
    nla(&mut o, TCA_HTB_PARMS, &p);
    o
}

/// `struct tc_sfq_qopt`: the defaults, perturb 10 (as libvirt).
fn sfq_options() -> Vec<u8> {
    let mut v = u32s(&[0]);
    v.extend_from_slice(&10i32.to_ne_bytes());
    v.extend_from_slice(&u32s(&[0, 0, 0]));
    v
}

fn tc_message(index: u32, handle: u32, parent: u32, kind: &str, options: Vec<u8>) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    (m.header.handle, m.header.parent) = (TcHandle::from(handle), TcHandle::from(parent));
    if !kind.is_empty() {
        let mut kind_z = kind.as_bytes().to_vec();
        kind_z.push(0);
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_KIND, kind_z)));
    }
    if !options.is_empty() {
        m.attributes.push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, options)));
    }
    m
}

/// The inbound limit on a link, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shaped {
    /// An htb root qdisc is there.
    pub htb: bool,
    /// Its class has sfq under it.
    pub sfq: bool,
}

impl Netlink {
    async fn tc_request(&self, msg: RouteNetlinkMessage, flags: u16, what: String) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req).map_err(op(what.clone()))?;
        while let Some(m) = response.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(op(what)(rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    }

    /// Delete link `index`'s root qdisc (and so its classes); a link without one is fine.
    pub async fn clear_shaping(&self, index: u32) -> Result<(), NetlinkError> {
        let m = tc_message(index, 0, ROOT, "", vec![]);
        let what = format!("deleting the root qdisc of link {index}");
        match self.tc_request(RouteNetlinkMessage::DelQueueDiscipline(m), 0, what).await {
            // No qdisc of ours: ENOENT, or EINVAL for the default one.
            Err(NetlinkError::Op { source, .. })
                if is_errno(&source, libc::ENOENT) || is_errno(&source, libc::EINVAL) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Shape link `index`'s egress to `s` (after clearing what a former start left there).
    /// Returns whether sfq is under the class (false on kernels without sfq).
    pub async fn set_shaping(&self, index: u32, s: &Shape) -> Result<bool, NetlinkError> {
        self.clear_shaping(index).await?;
        let create = NLM_F_CREATE | NLM_F_EXCL;
        let m = tc_message(index, HTB_QDISC, ROOT, "htb", htb_qdisc_options());
        let what = format!("adding the htb qdisc to link {index}");
        self.tc_request(RouteNetlinkMessage::NewQueueDiscipline(m), create, what).await?;
        let m = tc_message(index, HTB_CLASS, HTB_QDISC, "htb", htb_class_options(s));
        let what = format!("adding htb class 1:1 to link {index}");
        self.tc_request(RouteNetlinkMessage::NewTrafficClass(m), create, what).await?;
        let m = tc_message(index, SFQ_QDISC, HTB_CLASS, "sfq", sfq_options());
        let what = format!("adding the sfq qdisc to link {index}");
        match self.tc_request(RouteNetlinkMessage::NewQueueDiscipline(m), create, what).await {
            Ok(()) => Ok(true),
            // The kernel has no sfq (built without it, no module to load).
            Err(NetlinkError::Op { source, .. }) if is_errno(&source, libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// What shapes link `index`'s egress.
    pub async fn shaping(&self, index: u32) -> Result<Shaped, NetlinkError> {
        let msgs: Vec<TcMessage> = self
            .handle
            .qdisc()
            .get()
            .index(index as i32)
            .execute()
            .try_collect()
            .await
            .map_err(op(format!("listing the qdiscs of link {index}")))?;
        let has = |parent: u32, kind: &str| {
            msgs.iter().any(|m| {
                m.header.index == index as i32
                    && u32::from(m.header.parent) == parent
                    && m.attributes.iter().any(|a| matches!(a, TcAttribute::Kind(k) if k == kind))
            })
        };
        Ok(Shaped { htb: has(ROOT, "htb"), sfq: has(HTB_CLASS, "sfq") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_have_the_kernels_sizes() {
        let s = Shape { rate: 1000, ceil: 2000, burst_ticks: 1, cburst_ticks: 2 };
        // nla header 4 + tc_htb_glob 20; nla header 4 + tc_htb_opt 44; tc_sfq_qopt 20.
        assert_eq!(htb_qdisc_options().len(), 24);
        let o = htb_class_options(&s);
        assert_eq!(o.len(), 48);
        // rate at 4+8, ceil at 4+12+8, buffer and cbuffer after the two ratespecs.
        assert_eq!(&o[12..16], &1000u32.to_ne_bytes());
        assert_eq!(&o[24..28], &2000u32.to_ne_bytes());
        assert_eq!(&o[28..36], &u32s(&[1, 2])[..]);
        assert_eq!(sfq_options().len(), 20);
    }
}
