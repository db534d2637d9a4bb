//! XML parsing: the seed examples, what is refused (and how it is named), round trips.

use super::*;
use crate::xml::XmlError;

/// The seed's NAT network (002), as given to `virsh net-define` (uuid added).
const SEED_NAT: &str = "<network>
    <name>192.168.160.0</name>
    <uuid>588369df-02d6-45d8-9aec-1e869a1a8737</uuid>
    <forward mode='nat'/>
    <bridge name='br140' stp='on' delay='0'/>
    <mac address='52:54:00:a9:34:5c'/>
    <domain name='8.8.8.8'/>
    <ip address='192.168.160.1' netmask='255.255.255.0'>
        <dhcp>
            <range start='192.168.160.2' end='192.168.160.254'/>
        </dhcp>
    </ip>
</network>";

/// What `virsh net-dumpxml 192.168.160.0` printed for it in the seed.
const SEED_NAT_DUMPXML: &str = "<network>
  <name>192.168.160.0</name>
  <uuid>588369df-02d6-45d8-9aec-1e869a1a8737</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='br140' stp='on' delay='0'/>
  <mac address='52:54:00:a9:34:5c'/>
  <domain name='8.8.8.8'/>
  <ip address='192.168.160.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.160.2' end='192.168.160.254'/>
    </dhcp>
  </ip>
</network>
";

const SEED_PRIVATE: &str = r#"<network>
  <name>private</name>
  <bridge name="virbr2"/>
  <ip address="192.168.152.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.152.2" end="192.168.152.254"/>
    </dhcp>
  </ip>
  <ip family="ipv6" address="2001:db8:ca2:3::1" prefix="64"/>
</network>"#;

const SEED_HOST_BRIDGE: &str = r#"<network>
  <name>host-bridge</name>
  <forward mode="bridge"/>
  <bridge name="br0"/>
</network>"#;

const SEED_LOCAL: &str = r#"<network>
  <name>local</name>
  <bridge name="virbr1"/>
  <forward mode="route" dev="eth1"/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.122.2" end="192.168.122.254"/>
    </dhcp>
  </ip>
  <ip family="ipv6" address="2001:db8:ca2:2::1" prefix="64"/>
</network>"#;

/// The seed 003 `router` network, with its empty `<ip>...</ip>`.
const SEED_ROUTER: &str = "<network>
  <name>router</name>
  <uuid>186ffd11-ce2d-452a-9970-baf07b723de8</uuid>
  <forward mode='route'/>
  <bridge name='virbr1' stp='on' delay='0'/>
  <mac address='52:54:00:56:e6:21'/>
  <ip address='192.168.132.1' netmask='255.255.255.0'>
  </ip>
</network>";

/// The seed 003 `default` network as libvirt installed it, and its isolated variant (no <ip>).
const SEED_DEFAULT: &str = "<network>
  <name>default</name>
  <uuid>f6514662-26e5-431e-8544-fd216bed9312</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:53:d4:ee'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>";

const SEED_ISOLATED_NO_IP: &str = "<network>
  <name>default</name>
  <uuid>e8849d67-243a-4b0f-83ea-bc2b447580cf</uuid>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:22:1b:5f'/>
</network>";

/// The seed's "general metadata" + "connectivity" snippets put together into one document.
const SEED_BIG_PASSTHROUGH: &str = r#"<network ipv6='yes' trustGuestRxFilters='no'>
  <name>default</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <metadata>
    <app1:foo xmlns:app1="http://app1.org/app1/">..</app1:foo>
    <app2:bar xmlns:app2="http://app1.org/app2/">..</app2:bar>
  </metadata>
  <bridge name="virbr0" stp="on" delay="5" macTableManager="libvirt"/>
  <mtu size="9000"/>
  <domain name="example.com" localOnly="no"/>
  <forward mode='passthrough'>
    <interface dev='eth10'/>
    <interface dev='eth11'/>
    <interface dev='eth12'/>
    <interface dev='eth13'/>
    <interface dev='eth14'/>
  </forward>
</network>"#;

/// The seed's "addressing" snippet in a network.
const SEED_ADDRESSING: &str = r#"<network>
<name>addr</name>
<mac address='00:16:3E:5D:C7:9E'/>
<domain name="example.com"/>
<dns>
  <txt name="example" value="example value"/>
  <forwarder addr="8.8.8.8"/>
  <forwarder domain='example.com' addr="8.8.4.4"/>
  <forwarder domain='www.example.com'/>
  <srv service='name' protocol='tcp' domain='test-domain-name' target='.'
    port='1024' priority='10' weight='10'/>
  <host ip='192.168.122.2'>
    <hostname>myhost</hostname>
    <hostname>myhostalias</hostname>
  </host>
</dns>
<ip address="192.168.122.1" netmask="255.255.255.0" localPtr="yes">
  <dhcp>
    <range start="192.168.122.100" end="192.168.122.254"/>
    <host mac="00:16:3e:77:e2:ed" name="foo.example.com" ip="192.168.122.10"/>
    <host mac="00:16:3e:3e:a9:1a" name="bar.example.com" ip="192.168.122.11"/>
  </dhcp>
</ip>
<ip family="ipv6" address="2001:db8:ca2:2::1" prefix="64" localPtr="yes"/>
<route family="ipv6" address="2001:db9:ca1:1::" prefix="64" gateway="2001:db8:ca2:2::2"/>
</network>"#;

fn refused(xml: &str) -> String {
    parse(xml).expect_err("must be refused").to_string()
}

fn wrap(body: &str) -> String {
    format!("<network><name>t</name>{body}</network>")
}

#[test]
fn seed_nat_network_dumps_exactly_like_virsh() {
    let def = parse(SEED_NAT).unwrap();
    def.validate().unwrap();
    assert_eq!(def.forward.mode, ForwardMode::Nat);
    assert_eq!(def.bridge.name.as_deref(), Some("br140"));
    assert_eq!(def.ips[0].prefix, 24);
    assert_eq!(to_xml(&def), SEED_NAT_DUMPXML);
    assert_eq!(parse(SEED_NAT_DUMPXML).unwrap(), def);
}

#[test]
fn seed_networks_parse_and_validate() {
    let private = parse(SEED_PRIVATE).unwrap();
    assert_eq!(private.forward.mode, ForwardMode::Isolated);
    assert_eq!(private.ips.len(), 2);
    assert_eq!(private.ips[1].subnet().to_string(), "2001:db8:ca2:3::/64");
    let bridge = parse(SEED_HOST_BRIDGE).unwrap();
    assert_eq!((bridge.forward.mode, bridge.bridge.name.as_deref()), (ForwardMode::Bridge, Some("br0")));
    let local = parse(SEED_LOCAL).unwrap();
    assert_eq!((local.forward.mode, local.forward.dev.as_deref()), (ForwardMode::Route, Some("eth1")));
    let router = parse(SEED_ROUTER).unwrap();
    assert_eq!(router.ips[0].dhcp, None);
    let addressing = parse(SEED_ADDRESSING).unwrap();
    assert_eq!(addressing.dns.forwarders.len(), 3);
    assert_eq!(addressing.dns.hosts[0].hostnames, ["myhost", "myhostalias"]);
    assert!(addressing.ips.iter().all(|ip| ip.local_ptr));
    let default = parse(SEED_DEFAULT).unwrap();
    let mut ours = default_network();
    (ours.uuid, ours.mac, ours.autostart) = (default.uuid, default.mac, false);
    // The one deliberate difference: STP off (templates/networks/README.md).
    assert!(default.bridge.stp && !ours.bridge.stp);
    ours.bridge.stp = true;
    assert_eq!(ours, default, "the template is libvirt's default network");
    let isolated = parse(SEED_ISOLATED_NO_IP).unwrap();
    assert!(isolated.ips.is_empty() && isolated.forward.mode == ForwardMode::Isolated);
    for def in [private, bridge, local, router, addressing, default, isolated, default_network()] {
        def.validate().unwrap_or_else(|e| panic!("{}: {e}", def.name));
    }
}

#[test]
fn passthrough_example_with_metadata_is_refused_naming_the_mode() {
    let e = refused(SEED_BIG_PASSTHROUGH);
    assert!(e.contains("<forward>") && e.contains("mode 'passthrough'"), "{e}");
}

#[test]
fn interface_pool_is_refused_naming_the_interface_element() {
    let e = refused(&wrap("<forward mode='nat'><interface dev='eth0'/><interface dev='eth1'/></forward>"));
    assert!(e.contains("<interface>") && e.contains("more than one"), "{e}");
}

#[test]
fn libvirt_dumpxml_forward_interface_matching_dev_is_accepted() {
    let def = parse(&wrap("<forward dev='eth1' mode='route'><interface dev='eth1'/></forward>")).unwrap();
    assert_eq!(def.forward.dev.as_deref(), Some("eth1"));
    let def = parse(&wrap("<forward mode='route'><interface dev='eth2'/></forward>")).unwrap();
    assert_eq!(def.forward.dev.as_deref(), Some("eth2"));
    let e = refused(&wrap("<forward dev='eth1' mode='route'><interface dev='eth2'/></forward>"));
    assert!(e.contains("<interface dev='eth2'>"), "{e}");
}

#[test]
fn metadata_is_kept_verbatim_and_written_back() {
    // libvirt's networkxml2xmlin/metadata.xml, in substance.
    let inner = "\n    <app1:foo xmlns:app1=\"http://foo.org/\">fooish</app1:foo>\n    \
                 <app2:bar xmlns:app2=\"http://bar.com/\" maman=\"baz\">barish &amp; co</app2:bar>\n  ";
    let xml = format!(
        "<network><name>t</name><forward mode='bridge'/><bridge name='br0'/><metadata>{inner}</metadata></network>"
    );
    let def = parse(&xml).unwrap();
    assert_eq!(def.metadata.as_deref(), Some(inner));
    let out = to_xml(&def);
    assert!(out.contains(&format!("  <metadata>{inner}</metadata>\n")), "{out}");
    assert_eq!(parse(&out).unwrap(), def);
    assert_eq!(NetworkDef::from_toml(&def.to_toml()).unwrap(), def);
    // A hand-written TOML cannot smuggle elements out of <metadata>.
    let mut bad = def.clone();
    bad.metadata = Some("</metadata><forward mode='nat'/><metadata>".into());
    assert!(bad.validate().unwrap_err().to_string().contains("<metadata>"));
    bad.metadata = Some("<a>".into());
    assert!(bad.validate().is_err());
}

#[test]
fn family_prefix_form_and_zone_are_written_back_as_read() {
    // libvirt's nat-network-explicit-flood.xml, in substance.
    let xml = wrap(
        "<bridge name='virbr0' macTableManager='kernel' zone='libvirt'/><forward mode='nat'/>\
         <ip family='ipv4' address='192.168.123.1' netmask='255.255.255.0'/>\
         <ip family='ipv4' address='10.24.10.1'/><ip address='172.16.1.1' prefix='20'/>\
         <ip family='ipv6' address='2001:db8:ac10:fd01::1' prefix='64'/>",
    );
    let def = parse(&xml).unwrap();
    let out = to_xml(&def);
    for want in [
        "<bridge name='virbr0' zone='libvirt' stp='on' delay='0'/>",
        "<ip family='ipv4' address='192.168.123.1' netmask='255.255.255.0'/>",
        "<ip family='ipv4' address='10.24.10.1'/>",
        "<ip address='172.16.1.1' prefix='20'/>",
        "<ip family='ipv6' address='2001:db8:ac10:fd01::1' prefix='64'/>",
    ] {
        assert!(out.contains(want), "{want} in\n{out}");
    }
    assert_eq!(def.ips[1].prefix, 8, "the implied prefix is the address class");
    assert_eq!(parse(&out).unwrap(), def);
    assert_eq!(NetworkDef::from_toml(&def.to_toml()).unwrap(), def);
    let mut d = parse(&wrap("<bridge name='b' zone='bad zone'/>")).unwrap();
    d.complete(&Default::default());
    assert!(d.validate().unwrap_err().to_string().contains("firewalld zone"));
}

#[test]
fn device_pools_and_learning_off_are_refused_with_their_own_reason() {
    let e = refused(&wrap(
        "<forward mode='hostdev' managed='yes'><address type='pci' domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></forward>",
    ));
    assert!(e.contains("mode 'hostdev'") && e.contains("PCI") && !e.contains("unknown attribute"), "{e}");
    for m in ["passthrough", "private", "vepa"] {
        let e = refused(&wrap(&format!("<forward mode='{m}'><interface dev='eth1'/></forward>")));
        assert!(e.contains(&format!("mode '{m}'")) && e.contains("macvtap"), "{e}");
    }
    let e = refused(&wrap("<bridge name='b' macTableManager='libvirt'/>"));
    assert!(e.contains("macTableManager='libvirt'") && e.contains("not supported"), "{e}");
}

#[test]
fn attributes_libvirt_adds_on_dumpxml_are_accepted() {
    let xml = "<network connections='3' ipv6='yes' trustGuestRxFilters='no'><name>t</name>\
        <bridge name='virbr7' macTableManager='kernel'/><ip address='10.0.0.1' prefix='24' localPtr='yes'/></network>";
    let def = parse(xml).unwrap();
    assert!(def.ipv6 && def.ips[0].local_ptr);
    assert!(to_xml(&def).starts_with("<network ipv6='yes'>\n"));
}

#[test]
fn unknown_forward_mode_is_refused() {
    let e = refused(&wrap("<forward mode='tunnel'/>"));
    assert!(e.starts_with("<forward mode='tunnel'>: unknown forward mode"), "{e}");
}

#[test]
fn forward_without_mode_is_nat_like_libvirt() {
    assert_eq!(parse(&wrap("<forward/>")).unwrap().forward.mode, ForwardMode::Nat);
}

#[test]
fn malformed_xml_is_refused_with_position() {
    let e = parse("<network>\n<name>t</name>\n<bridge name='x'>\n</network>").unwrap_err();
    assert!(matches!(e, NetworkError::Xml(XmlError::Malformed { line: 4, .. })), "{e}");
    assert!(matches!(parse("not xml at all <"), Err(NetworkError::Xml(_))));
    assert!(matches!(parse(""), Err(NetworkError::Xml(_))));
}

#[test]
fn unsupported_elements_are_refused_by_name() {
    for (body, name) in [
        ("<portgroup name='engineering' default='yes'/>", "portgroup"),
        ("<virtualport type='openvswitch'/>", "virtualport"),
        ("<forward mode='nat'><pf dev='eth0'/></forward>", "pf"),
        ("<title>x</title>", "title"),
        ("<ip address='10.0.0.1' prefix='24'><dhcp><option name='x'/></dhcp></ip>", "option"),
    ] {
        let e = refused(&wrap(body));
        assert!(e.contains(&format!("<{name}>")), "{body}: {e}");
    }
}

#[test]
fn dnsmasq_options_are_read_under_any_prefix_and_written_back() {
    // libvirt's networkxml2xmlin/dnsmasq-options.xml, with another prefix.
    let xml = "<network xmlns:d='http://libvirt.org/schemas/network/dnsmasq/1.0'><name>t</name>\
        <d:options><d:option value='foo=bar'/><d:option value='cname=*.foo.example.com,master.example.com'/>\
        </d:options></network>";
    let def = parse(xml).unwrap();
    assert_eq!(def.dnsmasq_options, ["foo=bar", "cname=*.foo.example.com,master.example.com"]);
    let out = to_xml(&def);
    assert!(out.starts_with("<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>"), "{out}");
    assert!(
        out.contains("  <dnsmasq:options>\n    <dnsmasq:option value='foo=bar'/>\n    <dnsmasq:option value='cname=*.foo.example.com,master.example.com'/>\n  </dnsmasq:options>\n</network>"),
        "{out}"
    );
    assert_eq!(parse(&out).unwrap(), def);
}

#[test]
fn dnsmasq_options_need_their_namespace_and_their_own_elements() {
    let e = refused(&wrap("<dnsmasq:options><dnsmasq:option value='foo=bar'/></dnsmasq:options>"));
    assert!(e.contains("undeclared namespace prefix 'dnsmasq'") && e.contains("xmlns:dnsmasq="), "{e}");
    let ns = "xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'";
    let e = refused(&format!("<network {ns}><name>t</name><dnsmasq:option value='x'/></network>"));
    assert!(e.contains("dnsmasq:option"), "{e}");
    let e = refused(&format!(
        "<network {ns}><name>t</name><dnsmasq:options><dnsmasq:opt value='x'/></dnsmasq:options></network>"
    ));
    assert!(e.contains("dnsmasq:opt"), "{e}");
    let e = refused("<network xmlns:dnsmasq='http://example.com/other'><name>t</name></network>");
    assert!(e.contains("xmlns:dnsmasq") && e.contains("http://libvirt.org/schemas/network/dnsmasq/1.0"), "{e}");
}

#[test]
fn unknown_attributes_and_stray_text_are_refused() {
    let e = refused(&wrap("<bridge name='br1' colour='blue'/>"));
    assert!(e.contains("<bridge>") && e.contains("'colour'"), "{e}");
    let e = refused(&wrap("<ip address='10.0.0.1' prefix='24' foo='1'/>"));
    assert!(e.contains("'foo'"), "{e}");
    let e = refused(&wrap("<ip address='10.0.0.1' prefix='24'>hello</ip>"));
    assert!(e.contains("text content 'hello'"), "{e}");
    let e = refused(&wrap("<nat/>"));
    assert!(e.contains("unknown element <nat>"), "{e}");
}

#[test]
fn repeated_single_elements_and_missing_name_are_refused() {
    assert!(matches!(parse(&wrap("<mtu size='1500'/><mtu size='9000'/>")), Err(NetworkError::DuplicateElement { .. })));
    assert!(matches!(
        parse("<network><uuid>588369df-02d6-45d8-9aec-1e869a1a8737</uuid></network>"),
        Err(NetworkError::MissingElement { .. })
    ));
    assert!(matches!(parse("<domain><name>x</name></domain>"), Err(NetworkError::NotANetwork(_))));
}

#[test]
fn netmask_and_prefix_rules() {
    let d = parse(&wrap("<ip address='10.1.0.1' netmask='255.255.0.0'/>")).unwrap();
    assert_eq!(d.ips[0].prefix, 16);
    assert!(to_xml(&d).contains("netmask='255.255.0.0'"));
    assert!(refused(&wrap("<ip address='10.1.0.1' netmask='255.0.255.0'/>")).contains("not a contiguous netmask"));
    assert!(refused(&wrap("<ip address='10.1.0.1' netmask='255.0.0.0' prefix='8'/>")).contains("not both"));
    assert!(refused(&wrap("<ip family='ipv4' address='fd00::1' prefix='64'/>")).contains("does not match"));
    assert_eq!(parse(&wrap("<ip address='192.168.5.1'/>")).unwrap().ips[0].prefix, 24, "classful default");
    assert_eq!(parse(&wrap("<ip family='ipv6' address='fd00::1'/>")).unwrap().ips[0].prefix, 64);
}

#[test]
fn missing_uuid_is_generated_when_completed() {
    let (mut a, mut b) = (parse(&wrap("")).unwrap(), parse(&wrap("")).unwrap());
    assert!(a.uuid.is_nil(), "no uuid in the text: a redefinition keeps the defined one");
    a.complete(&Default::default());
    b.complete(&Default::default());
    assert_ne!(a.uuid, b.uuid);
    assert!(!a.uuid.is_nil());
}

#[test]
fn every_test_network_round_trips_through_xml_and_toml() {
    let lease = "<range start='10.0.0.2' end='10.0.0.9'><lease expiry='2' unit='hours'/></range>";
    let extra = [
        wrap(&format!("<forward mode='nat' dev='eth0'><nat><address start='1.2.3.4' end='1.2.3.10'/><port start='500' end='1000'/></nat></forward><bridge name='b' stp='off' delay='3'/><mtu size='9000'/><ip address='10.0.0.1' prefix='24'><tftp root='/srv/tftp'/><dhcp>{lease}<host mac='52:54:00:00:00:01' name='h' ip='10.0.0.20'><lease expiry='0'/></host><bootp file='pxelinux.0' server='10.0.0.1'/></dhcp></ip>")),
        wrap("<forward mode='open'/><dns enable='no' forwardPlainNames='no'/><domain name='x.test' localOnly='yes'/><ip family='ipv6' address='fd00::1' prefix='64'><dhcp><host id='0:1:2' ip='fd00::5'/></dhcp></ip><route address='10.5.0.0' prefix='16' gateway='10.0.0.2' metric='5'/>"),
        wrap("<forward mode='bridge'/><bridge name='br0' stp='off'/>"),
        wrap("<dns><srv service='ldap' protocol='tcp'/><txt name='a' value='b &amp; &apos;c&apos;'/></dns>"),
    ];
    let seeds = [
        SEED_NAT,
        SEED_PRIVATE,
        SEED_HOST_BRIDGE,
        SEED_LOCAL,
        SEED_ROUTER,
        SEED_ADDRESSING,
        SEED_DEFAULT,
        SEED_ISOLATED_NO_IP,
        DEFAULT_TEMPLATE,
    ];
    for xml in seeds.iter().copied().chain(extra.iter().map(String::as_str)) {
        let def = parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
        let out = to_xml(&def);
        assert_eq!(parse(&out).unwrap(), def, "XML round trip:\n{out}");
        assert_eq!(to_xml(&parse(&out).unwrap()), out, "dumpxml is a fixed point");
        let toml = def.to_toml();
        assert_eq!(NetworkDef::from_toml(&toml).unwrap(), def, "TOML round trip:\n{toml}");
        assert_eq!(parse_any(&toml).unwrap(), def);
        assert_eq!(parse_any(&format!("\n  {out}")).unwrap(), def);
    }
}

#[test]
fn net_update_snippets_parse_and_render() {
    let h = parse_dhcp_host("<host mac='52:54:00:AA:bb:cc' name='vm1' ip='192.168.122.45'/>").unwrap();
    assert_eq!(h.mac.unwrap().to_string(), "52:54:00:aa:bb:cc");
    assert_eq!(dhcp_host_xml(&h), "<host mac='52:54:00:aa:bb:cc' name='vm1' ip='192.168.122.45'/>\n");
    assert_eq!(parse_dhcp_host(&dhcp_host_xml(&h)).unwrap(), h);
    let d = parse_dns_host("<host ip='192.168.122.2'><hostname>a</hostname><hostname>b</hostname></host>").unwrap();
    assert_eq!(d.hostnames, ["a", "b"]);
    assert_eq!(parse_dns_host(&dns_host_xml(&d)).unwrap(), d);
    let r = parse_dhcp_range("<range start='10.0.0.2' end='10.0.0.3'/>").unwrap();
    assert_eq!(parse_dhcp_range(&dhcp_range_xml(&r)).unwrap(), r);
    assert!(parse_dns_host("<host ip='192.168.122.2'/>").unwrap_err().to_string().contains("<hostname>"));
    assert!(parse_dhcp_host("<range start='10.0.0.2' end='10.0.0.3'/>").is_err());
    assert!(parse_dhcp_host("<host mac='52:54:00:00:00:01' name='x'/>").unwrap_err().to_string().contains("'ip'"));
}

#[test]
fn toml_is_refused_with_the_toml_error() {
    let e = parse_any("name = 'x'\n[forward]\nmode = 'passthrough'\n").unwrap_err();
    assert!(matches!(e, NetworkError::Toml(_)) && e.to_string().contains("passthrough"), "{e}");
}

#[test]
fn open_network_with_a_forward_dev_is_accepted_as_libvirt_accepts_it() {
    // libvirt's open-network-with-forward-dev.xml, in substance.
    let xml = "<network><name>open</name><uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid><bridge name='virbr1'/>\
               <mac address='12:34:56:78:9A:BC'/><forward mode='open' dev='eth0'/>\
               <ip address='192.168.122.1' netmask='255.255.255.0'/></network>";
    let def = parse(xml).unwrap();
    def.validate().unwrap();
    assert_eq!(def.forward.dev.as_deref(), Some("eth0"));
    let out = to_xml(&def);
    assert!(out.contains("<forward dev='eth0' mode='open'>"), "{out}");
    assert_eq!(parse(&out).unwrap(), def);
    assert!(super::super::firewall::render(&def).is_none(), "open mode has no rules, dev or not");
    let iso = parse(&xml.replace("<forward mode='open' dev='eth0'/>", "")).unwrap();
    let mut iso = iso;
    iso.forward.dev = Some("eth0".into());
    assert!(iso.validate().unwrap_err().to_string().contains("<forward dev>"));
}

const KVMCTL_NS: &str = "https://kvmctl.dev/xml/network/1";

#[test]
fn kvmctl_interface_elements_round_trip_under_any_prefix_bound_to_kvmctls_namespace() {
    let xml = format!(
        "<network xmlns:k='{KVMCTL_NS}'><name>lan</name><bridge name='br-lan'/><k:interface dev='ens2'/><k:interface dev='ens3'/></network>"
    );
    let def = parse(&xml).unwrap();
    let devs: Vec<&str> = def.interfaces.iter().map(|i| i.dev.as_str()).collect();
    assert_eq!(devs, ["ens2", "ens3"]);
    let out = to_xml(&def);
    assert!(out.starts_with(&format!("<network xmlns:kvmctl='{KVMCTL_NS}'>\n")), "{out}");
    assert!(out.ends_with("  <kvmctl:interface dev='ens2'/>\n  <kvmctl:interface dev='ens3'/>\n</network>\n"), "{out}");
    assert_eq!(parse(&out).unwrap(), def);
    let toml = def.to_toml();
    assert!(toml.contains("[[interface]]\ndev = \"ens2\"\n"), "{toml}");
    assert_eq!(NetworkDef::from_toml(&toml).unwrap(), def);
    // No interface: no namespace declaration either.
    assert!(!to_xml(&parse(SEED_NAT).unwrap()).contains("xmlns"));
}

#[test]
fn kvmctl_elements_need_kvmctls_namespace_and_are_checked() {
    let undeclared = "<network><name>n</name><kvmctl:interface dev='ens2'/></network>";
    assert!(refused(undeclared).contains("undeclared namespace prefix 'kvmctl'"), "{}", refused(undeclared));
    let wrong = "<network xmlns:kvmctl='http://example.org/x'><name>n</name></network>";
    assert_eq!(
        refused(wrong),
        format!("<network xmlns:kvmctl='http://example.org/x'>: kvmctl's namespace is '{KVMCTL_NS}'")
    );
    let other = format!("<network xmlns:kvmctl='{KVMCTL_NS}'><name>n</name><kvmctl:port dev='x'/></network>");
    assert!(refused(&other).contains("unknown element <kvmctl:port>"), "{}", refused(&other));
    let no_dev = format!("<network xmlns:kvmctl='{KVMCTL_NS}'><name>n</name><kvmctl:interface/></network>");
    assert!(refused(&no_dev).contains("missing attribute 'dev'"), "{}", refused(&no_dev));
    let extra =
        format!("<network xmlns:kvmctl='{KVMCTL_NS}'><name>n</name><kvmctl:interface dev='a' mtu='1'/></network>");
    assert!(refused(&extra).contains("unknown attribute 'mtu'"), "{}", refused(&extra));
    // Other namespaces stay refused as before.
    assert!(refused("<network xmlns:x='urn:x'><name>n</name></network>").contains("xmlns:x"));
}
