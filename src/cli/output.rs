//! Output in virsh's shapes: tables, `Key: value` info blocks, or JSON with `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
}

impl Out {
    /// A confirmation line (`Pool x started`); suppressed by `-q` and `--json`.
    pub fn done(&self, msg: impl AsRef<str>) {
        if !self.quiet && !self.json {
            println!("{}", msg.as_ref());
        }
    }

    pub fn json<T: Serialize>(&self, v: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }

    /// The short forms of a list: `--json` (everything) or one field per line (`--name`);
    /// returns whether it printed, so the caller prints the table otherwise.
    pub fn short_list<T: Serialize>(&self, items: &[T], field: Option<fn(&T) -> &str>) -> anyhow::Result<bool> {
        if self.json {
            self.json(&items)?;
            return Ok(true);
        }
        match field {
            Some(f) => {
                items.iter().for_each(|i| println!("{}", f(i)));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A progress reporter: an indicatif bar on a terminal, nothing otherwise.
    pub fn progress(&self, what: &str) -> impl FnMut(u64, u64) {
        let bar = (!self.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(0).with_message(what.to_string());
            b.set_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        });
        move |done, total| {
            if let Some(b) = &bar {
                b.set_length(total);
                b.set_position(done);
                if done >= total {
                    b.finish_and_clear();
                }
            }
        }
    }
}

/// A virsh-style table: a leading space, columns separated by three spaces, a dashed rule.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 3 * widths.len().saturating_sub(1) + 2));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    out
}

/// `Key:   value` lines, values aligned as virsh does.
pub fn info_block(rows: &[(&str, String)]) -> String {
    // virsh's 16 columns, wider when a label needs it (nodeinfo's "Core(s) per socket:").
    let w = rows.iter().map(|(k, _)| k.len() + 2).max().unwrap_or(0).max(16);
    rows.iter().map(|(k, v)| format!("{:<w$}{v}\n", format!("{k}:"))).collect()
}

/// virsh's list filters: active objects, `--all`, or only the inactive ones.
pub fn listed(all: bool, inactive: bool, active: bool) -> bool {
    if inactive {
        !active
    } else {
        all || active
    }
}

/// virsh's persistence and autostart filters of `list`, `net-list` and `pool-list`: each pair
/// given together (or neither) keeps both kinds.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Filter {
    /// Only persistent (defined) objects.
    #[arg(long)]
    pub persistent: bool,
    /// Only transient objects (running without a definition).
    #[arg(long)]
    pub transient: bool,
    /// Only objects marked autostart.
    #[arg(long)]
    pub autostart: bool,
    /// Only objects not marked autostart.
    #[arg(long)]
    pub no_autostart: bool,
}

impl Filter {
    pub fn keeps(&self, persistent: bool, autostart: bool) -> bool {
        let pair = |want_yes: bool, want_no: bool, v: bool| want_yes == want_no || (if v { want_yes } else { want_no });
        pair(self.persistent, self.transient, persistent) && pair(self.autostart, self.no_autostart, autostart)
    }
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_both_kinds_when_a_pair_is_given_together_or_not_at_all() {
        let f =
            |persistent, transient, autostart, no_autostart| Filter { persistent, transient, autostart, no_autostart };
        assert!(f(false, false, false, false).keeps(false, true));
        assert!(f(true, true, true, true).keeps(false, false));
        assert!(f(true, false, false, false).keeps(true, false));
        assert!(!f(true, false, false, false).keeps(false, false));
        assert!(f(false, true, false, false).keeps(false, true));
        assert!(!f(false, false, true, false).keeps(true, false));
        assert!(f(false, false, false, true).keeps(true, false));
        assert!(!f(true, false, false, true).keeps(true, true));
    }

    #[test]
    fn table_looks_like_virsh() {
        let t = table(&["Name", "State", "Autostart"], &[vec!["default".into(), "active".into(), "yes".into()]]);
        assert_eq!(t, " Name      State    Autostart\n------------------------------\n default   active   yes\n\n");
    }
}
