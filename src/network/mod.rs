//! Virtual networks (libvirt network XML model, bridge, firewall, dnsmasq).
