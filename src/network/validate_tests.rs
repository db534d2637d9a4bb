//! Every validation error, one test each: the input, the variant, and that the message names
//! the network, the element and the value.

use super::super::libvirt_xml::parse;
use super::*;

/// A network `t` with the given body, parsed (not yet validated).
fn net(body: &str) -> NetworkDef {
    parse(&format!("<network><name>t</name><uuid>11111111-2222-3333-4444-555555555555</uuid>{body}</network>"))
        .unwrap_or_else(|e| panic!("test XML must parse: {e}"))
}

const NAT: &str = "<forward mode='nat'/><bridge name='virbr9'/>";

fn nat_with_dhcp(dhcp: &str) -> NetworkDef {
    net(&format!("{NAT}<ip address='10.0.0.1' netmask='255.255.255.0'><dhcp>{dhcp}</dhcp></ip>"))
}

fn err(def: &NetworkDef) -> (NetworkError, String) {
    let e = def.validate().expect_err("validation must fail");
    let msg = e.to_string();
    assert!(msg.contains("network 't'") || msg.contains("network name"), "message names the network: {msg}");
    (e, msg)
}

#[test]
fn valid_networks_pass() {
    nat_with_dhcp("<range start='10.0.0.2' end='10.0.0.254'/><host mac='52:54:00:00:00:01' ip='10.0.0.5'/>")
        .validate()
        .unwrap();
    net("<bridge name='virbr3'/><ip address='192.168.152.1' netmask='255.255.255.0'/><ip family='ipv6' address='2001:db8:ca2:3::1' prefix='64'/>")
        .validate()
        .unwrap();
    net("<forward mode='bridge'/><bridge name='br0'/>").validate().unwrap();
}

#[test]
fn dhcp_range_reversed_is_refused() {
    let (e, msg) = err(&nat_with_dhcp("<range start='10.0.0.9' end='10.0.0.2'/>"));
    assert!(matches!(e, NetworkError::RangeReversed { .. }));
    assert_eq!(msg, "network 't': <range start='10.0.0.9' end='10.0.0.2'> is reversed");
}

#[test]
fn dhcp_range_outside_subnet_is_refused() {
    let (e, msg) = err(&nat_with_dhcp("<range start='10.0.0.2' end='10.0.1.20'/>"));
    assert!(matches!(e, NetworkError::RangeOutsideSubnet { .. }));
    assert!(msg.contains("10.0.1.20") && msg.contains("10.0.0.0/24"), "{msg}");
    let (e, _) = err(&nat_with_dhcp("<range start='fd00::2' end='fd00::9'/>"));
    assert!(matches!(e, NetworkError::RangeOutsideSubnet { .. }), "a v6 range in a v4 <ip>");
}

#[test]
fn dhcp_range_including_network_host_or_broadcast_address_is_refused() {
    for (range, what) in [
        ("<range start='10.0.0.0' end='10.0.0.9'/>", "network address"),
        ("<range start='10.0.0.1' end='10.0.0.9'/>", "host address"),
        ("<range start='10.0.0.2' end='10.0.0.255'/>", "broadcast address"),
    ] {
        let (e, msg) = err(&nat_with_dhcp(range));
        assert!(matches!(e, NetworkError::RangeIncludesReserved { .. }), "{range}");
        assert!(msg.contains(what), "{msg}");
    }
}

#[test]
fn duplicate_static_host_ip_is_refused() {
    let hosts = "<host mac='52:54:00:00:00:01' ip='10.0.0.5'/><host mac='52:54:00:00:00:02' ip='10.0.0.5'/>";
    let (e, msg) = err(&nat_with_dhcp(hosts));
    assert!(matches!(e, NetworkError::DuplicateHostIp { .. }));
    assert!(msg.contains("<host ip='10.0.0.5'>"), "{msg}");
}

#[test]
fn duplicate_static_host_mac_is_refused() {
    let hosts = "<host mac='52:54:00:00:00:01' ip='10.0.0.5'/><host mac='52:54:00:00:00:01' ip='10.0.0.6'/>";
    let (e, msg) = err(&nat_with_dhcp(hosts));
    assert!(matches!(e, NetworkError::DuplicateHostMac { .. }));
    assert!(msg.contains("52:54:00:00:00:01"), "{msg}");
}

#[test]
fn duplicate_static_host_name_is_refused() {
    let hosts =
        "<host mac='52:54:00:00:00:01' name='a' ip='10.0.0.5'/><host mac='52:54:00:00:00:02' name='A' ip='10.0.0.6'/>";
    assert!(matches!(err(&nat_with_dhcp(hosts)).0, NetworkError::DuplicateHostName { .. }));
}

#[test]
fn static_host_outside_subnet_is_refused() {
    let (e, msg) = err(&nat_with_dhcp("<host mac='52:54:00:00:00:01' ip='10.9.0.5'/>"));
    assert!(matches!(e, NetworkError::HostOutsideSubnet { .. }));
    assert!(msg.contains("10.9.0.5"), "{msg}");
}

#[test]
fn static_host_on_the_bridge_address_is_refused() {
    let (e, msg) = err(&nat_with_dhcp("<host mac='52:54:00:00:00:01' ip='10.0.0.1'/>"));
    assert!(matches!(e, NetworkError::HostIpReserved { what: "host address", .. }), "{msg}");
}

#[test]
fn static_host_without_mac_or_name_is_refused() {
    let (e, _) = err(&nat_with_dhcp("<host ip='10.0.0.7'/>"));
    assert!(matches!(e, NetworkError::BadDhcpHost { .. }));
}

#[test]
fn ipv6_static_host_with_mac_is_refused() {
    let def = net("<bridge name='v6'/><ip family='ipv6' address='fd00::1' prefix='64'><dhcp><host mac='52:54:00:00:00:01' ip='fd00::5'/></dhcp></ip>");
    let (e, msg) = err(&def);
    assert!(matches!(e, NetworkError::BadDhcpHost { .. }) && msg.contains("id="), "{msg}");
}

#[test]
fn multicast_mac_is_refused() {
    let (e, msg) = err(&net("<bridge name='virbr9'/><mac address='01:00:5e:00:00:01'/>"));
    assert!(matches!(e, NetworkError::MacMulticast { .. }));
    assert!(msg.contains("<mac address='01:00:5e:00:00:01'>"), "{msg}");
    let (e, msg) = err(&nat_with_dhcp("<host mac='33:33:00:00:00:01' ip='10.0.0.5'/>"));
    assert!(matches!(e, NetworkError::MacMulticast { .. }) && msg.contains("<host mac="), "{msg}");
}

#[test]
fn all_zero_mac_is_refused() {
    let (e, _) = err(&net("<bridge name='virbr9'/><mac address='00:00:00:00:00:00'/>"));
    assert!(matches!(e, NetworkError::MacZero { .. }));
}

#[test]
fn malformed_mac_is_refused_naming_the_element() {
    let e = parse("<network><name>t</name><mac address='52:54:00:zz:00:01'/></network>").unwrap_err();
    assert!(matches!(e, NetworkError::BadValue { .. }));
    assert!(e.to_string().starts_with("<mac address='52:54:00:zz:00:01'>: malformed MAC address"), "{e}");
    let e = parse("<network><name>t</name><ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54' ip='10.0.0.2'/></dhcp></ip></network>")
        .unwrap_err();
    assert!(e.to_string().starts_with("<host mac='52:54'>"), "{e}");
}

#[test]
fn bridge_name_longer_than_15_bytes_is_refused() {
    let (e, msg) = err(&net("<bridge name='a-very-long-bridge0'/>"));
    assert!(matches!(e, NetworkError::BridgeNameTooLong { len: 19, .. }));
    assert!(msg.contains("a-very-long-bridge0"), "{msg}");
    net("<bridge name='exactly15bytes0'/>").validate().unwrap();
}

#[test]
fn bridge_name_with_invalid_characters_is_refused() {
    for name in ["br/0", "br 0", "br:0", ".."] {
        let (e, _) = err(&net(&format!("<bridge name='{name}'/>")));
        assert!(matches!(e, NetworkError::BadIfName { .. }), "{name}");
    }
}

#[test]
fn bridge_mode_without_bridge_name_is_refused() {
    let (e, _) = err(&net("<forward mode='bridge'/>"));
    assert!(matches!(e, NetworkError::BridgeModeNeedsBridge { .. }));
}

#[test]
fn bridge_mode_with_ip_is_refused() {
    let (e, msg) = err(&net("<forward mode='bridge'/><bridge name='br0'/><ip address='10.0.0.1' prefix='24'/>"));
    assert!(matches!(e, NetworkError::NotWithMode { .. }) && msg.contains("<ip>"), "{msg}");
}

#[test]
fn nat_without_any_ip_is_refused() {
    let (e, msg) = err(&net("<forward mode='nat'/>"));
    assert!(matches!(e, NetworkError::ModeNeedsIp { .. }) && msg.contains("needs an <ip>"), "{msg}");
}

#[test]
fn ipv6_only_nat_network_is_accepted_as_libvirt_does() {
    // libvirt's networkxml2confdata/dhcp6-network.xml, with nat ipv6='yes' too.
    for nat in ["<forward mode='nat'/>", "<forward mode='nat'><nat ipv6='yes'/></forward>"] {
        net(&format!(
            "{nat}<ip family='ipv6' address='2001:db8:ac10:fd01::1' prefix='64'><dhcp>\
             <range start='2001:db8:ac10:fd01::1:10' end='2001:db8:ac10:fd01::1:ff'/>\
             <host id='0:3:0:1:0:16:3e:11:22:33' name='peter.xyz' ip='2001:db8:ac10:fd01::1:22'/></dhcp></ip>"
        ))
        .validate()
        .unwrap();
    }
}

#[test]
fn route_without_ip_is_refused() {
    assert!(matches!(err(&net("<forward mode='route'/>")).0, NetworkError::ModeNeedsIp { .. }));
}

#[test]
fn forward_dev_is_accepted_on_open_networks_and_refused_on_isolated_ones() {
    net("<forward mode='open' dev='eth0'/><ip address='10.0.0.1' prefix='24'/>").validate().unwrap();
    let mut d = net("<ip address='10.0.0.1' prefix='24'/>");
    d.forward.dev = Some("eth0".into());
    assert!(matches!(d.validate().unwrap_err(), NetworkError::NotWithMode { .. }));
}

#[test]
fn two_ipv4_dhcp_sections_are_refused() {
    let ip = |a: &str| format!("<ip address='{a}.1' prefix='24'><dhcp><range start='{a}.2' end='{a}.9'/></dhcp></ip>");
    let (e, msg) = err(&net(&format!("{NAT}{}{}", ip("10.0.0"), ip("10.0.1"))));
    assert!(matches!(e, NetworkError::MultipleDhcp { family: "IPv4", .. }), "{msg}");
}

#[test]
fn overlapping_subnets_are_refused() {
    let (e, msg) = err(&net("<ip address='10.0.0.1' prefix='16'/><ip address='10.0.5.1' prefix='24'/>"));
    assert!(matches!(e, NetworkError::SubnetOverlap { .. }) && msg.contains("10.0.0.0/16"), "{msg}");
}

#[test]
fn prefix_longer_than_the_address_is_refused() {
    let (e, _) = err(&net("<ip address='10.0.0.1' prefix='33'/>"));
    assert!(matches!(e, NetworkError::BadPrefix { prefix: 33, .. }));
    let (e, _) = err(&net("<ip family='ipv6' address='fd00::1' prefix='129'/>"));
    assert!(matches!(e, NetworkError::BadPrefix { prefix: 129, .. }));
}

#[test]
fn bridge_address_that_is_the_network_or_broadcast_address_is_refused() {
    assert!(matches!(err(&net("<ip address='10.0.0.0' prefix='24'/>")).0, NetworkError::IpNotHost { .. }));
    assert!(matches!(err(&net("<ip address='10.0.0.255' prefix='24'/>")).0, NetworkError::IpNotHost { .. }));
}

#[test]
fn mtu_out_of_range_is_refused() {
    for mtu in [67, 65536] {
        assert!(matches!(err(&net(&format!("<mtu size='{mtu}'/>"))).0, NetworkError::MtuOutOfRange { .. }));
    }
    net("<mtu size='9000'/>").validate().unwrap();
}

#[test]
fn short_lease_is_refused() {
    let (e, _) =
        err(&nat_with_dhcp("<range start='10.0.0.2' end='10.0.0.9'><lease expiry='30' unit='seconds'/></range>"));
    assert!(matches!(e, NetworkError::LeaseTooShort { seconds: 30, .. }));
    nat_with_dhcp("<range start='10.0.0.2' end='10.0.0.9'><lease expiry='0'/></range>").validate().unwrap();
}

#[test]
fn bad_network_name_is_refused() {
    let mut def = net("");
    def.name = "../etc".into();
    assert!(matches!(def.validate(), Err(NetworkError::Name(_))));
}

#[test]
fn newline_in_a_dnsmasq_value_is_refused() {
    let mut def = net("<domain name='example.com'/>");
    def.domain.as_mut().unwrap().name = "example.com\nserver=6.6.6.6".into();
    assert!(matches!(err(&def).0, NetworkError::BadText { .. }));
    let def = net("<dns><txt name='a' value='x&#10;port=0'/></dns>");
    assert!(matches!(err(&def).0, NetworkError::BadText { .. }));
}

#[test]
fn disabled_dns_with_records_is_refused() {
    let (e, _) = err(&net("<dns enable='no'><host ip='10.0.0.9'><hostname>a</hostname></host></dns>"));
    assert!(matches!(e, NetworkError::DnsDisabledWithContent { .. }));
}

#[test]
fn route_gateway_outside_the_network_is_refused() {
    let body = "<ip address='10.0.0.1' prefix='24'/><route address='10.9.0.0' prefix='16' gateway='10.1.0.2'/>";
    let (e, msg) = err(&net(body));
    assert!(matches!(e, NetworkError::BadRoute { .. }) && msg.contains("gateway"), "{msg}");
    let ok = "<ip address='10.0.0.1' prefix='24'/><route address='10.9.0.0' prefix='16' gateway='10.0.0.2'/>";
    net(ok).validate().unwrap();
}

#[test]
fn nat_element_on_route_network_and_reversed_nat_ranges_are_refused() {
    let mut def = net("<forward mode='route'/><ip address='10.0.0.1' prefix='24'/>");
    def.forward.nat.port.start = 2000;
    assert!(matches!(err(&def).0, NetworkError::NotWithMode { .. }));
    let nat = |inner: &str| {
        net(&format!("<forward mode='nat'><nat>{inner}</nat></forward><ip address='10.0.0.1' prefix='24'/>"))
    };
    let (e, _) = err(&nat("<address start='1.2.3.9' end='1.2.3.4'/>"));
    assert!(matches!(e, NetworkError::NatRangeReversed { .. }));
    let (e, _) = err(&nat("<port start='2000' end='1000'/>"));
    assert!(matches!(e, NetworkError::NatPortRange { .. }));
}

#[test]
fn local_ptr_needs_an_aligned_prefix() {
    let (e, _) = err(&net("<ip address='10.0.0.1' prefix='20' localPtr='yes'/>"));
    assert!(matches!(e, NetworkError::LocalPtrPrefix { step: 8, .. }));
}

#[test]
fn tftp_on_ipv6_and_relative_tftp_root_are_refused() {
    let (e, _) = err(&net("<ip family='ipv6' address='fd00::1' prefix='64'><tftp root='/srv'/></ip>"));
    assert!(matches!(e, NetworkError::BadText { .. }));
    let (e, msg) = err(&net("<ip address='10.0.0.1' prefix='24'><tftp root='srv'/></ip>"));
    assert!(matches!(e, NetworkError::BadText { .. }) && msg.contains("absolute"), "{msg}");
}
