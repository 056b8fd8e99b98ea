//! Asking the new Dovecot itself (`[verify] doveadm`): a file-level check
//! can pass while the server still cannot serve a mailbox (its auth process
//! cannot read the userdb, a setting hides the mail). So, after the switch:
//! does `doveadm user` find the user with the owner and home the switch
//! wrote, and does `doveadm mailbox status` show every copied folder with
//! as many messages, the carried UIDVALIDITY and at least the carried
//! UIDNEXT?

use std::collections::HashMap;
use std::process::{Command, Stdio};

use crate::config::VerifySettings;
use crate::maildir::names::FolderName;

use super::mailbox::Mailbox;

/// What the target holds of one folder.
#[derive(Debug, Clone)]
pub(crate) struct FolderFacts {
    /// `None` for INBOX.
    pub name: Option<FolderName>,
    pub messages: u64,
    /// UIDVALIDITY and next UID of the carried uidlist.
    pub uids: Option<(u32, u32)>,
}

/// Every disagreement between the new server and what was copied.
pub(crate) fn check(
    settings: &VerifySettings,
    mb: &Mailbox,
    home: Option<&str>,
    folders: &[FolderFacts],
) -> Vec<String> {
    let Some(doveadm) = &settings.doveadm else {
        return Vec::new();
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(doveadm);
        if let Some(c) = &settings.doveadm_config {
            cmd.arg("-c").arg(c);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: {e}", doveadm.display()))
            .and_then(|o| {
                if o.status.success() {
                    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
                } else {
                    Err(format!(
                        "doveadm {} {} failed ({}): {}",
                        args[0],
                        crate::shown::text(&mb.target_key),
                        o.status,
                        crate::shown::bytes(o.stderr.trim_ascii())
                    ))
                }
            })
    };
    let mut problems = Vec::new();
    match run(&["user", &mb.target_key]) {
        Ok(out) => problems.extend(check_user(&out, mb, home)),
        Err(e) => return vec![e],
    }
    match run(&[
        "-f",
        "tab",
        "mailbox",
        "status",
        "-u",
        &mb.target_key,
        "messages uidvalidity uidnext",
        "*",
    ]) {
        Ok(out) => problems.extend(check_status(&out, folders)),
        Err(e) => problems.push(e),
    }
    problems
}

/// `doveadm user` prints `field<TAB>value` lines.
fn check_user(out: &str, mb: &Mailbox, home: Option<&str>) -> Vec<String> {
    let fields: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('\t')).collect();
    let mut problems = Vec::new();
    let mut wanted = vec![
        ("uid", mb.owner.uid.to_string()),
        ("gid", mb.owner.gid.to_string()),
    ];
    wanted.extend(home.map(|h| ("home", h.to_string())));
    for (field, want) in wanted {
        let got = fields.get(field).copied().unwrap_or_default();
        // A name is what the system resolves; only numbers are compared.
        let comparable = field == "home" || got.parse::<u32>().is_ok();
        if comparable && got != want {
            problems.push(format!(
                "the new Dovecot sees {field} {:?}, the switch wrote {want:?}",
                crate::shown::text(got)
            ));
        }
    }
    problems
}

/// `doveadm -f tab mailbox status`: a header line naming the columns,
/// then one line per mailbox, names in UTF-8 with the server's separator.
fn check_status(out: &str, folders: &[FolderFacts]) -> Vec<String> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(name_col), Some(msg_col), Some(next_col), Some(valid_col)) = (
        col("mailbox"),
        col("messages"),
        col("uidnext"),
        col("uidvalidity"),
    ) else {
        return vec![format!(
            "doveadm mailbox status printed no usable header ({:?})",
            crate::shown::text(&header.join(" "))
        )];
    };
    let mut seen: HashMap<String, (u64, u32, u32)> = HashMap::new();
    for l in lines {
        let cells: Vec<&str> = l.split('\t').collect();
        let num = |i: usize| cells.get(i).and_then(|c| c.parse::<u64>().ok());
        if let (Some(name), Some(m), Some(n), Some(v)) = (
            cells.get(name_col),
            num(msg_col),
            num(next_col),
            num(valid_col),
        ) {
            seen.insert(name.to_string(), (m, n as u32, v as u32));
        }
    }
    let Some(naming) = naming_of(&seen, folders) else {
        return vec!["the new Dovecot does not show the migrated folders".into()];
    };
    let mut problems = Vec::new();
    for f in folders {
        let shown = f
            .name
            .as_ref()
            .map_or_else(|| "INBOX".into(), ToString::to_string);
        let Some(&(messages, uidnext, uidvalidity)) = seen.get(&naming.name(f)) else {
            problems.push(format!(
                "{shown}: the new Dovecot does not show this folder"
            ));
            continue;
        };
        if messages != f.messages {
            problems.push(format!(
                "{shown}: the new Dovecot shows {messages} messages, {} were copied",
                f.messages
            ));
        }
        if let Some((valid, next)) = f.uids
            && (uidvalidity != valid || uidnext < next)
        {
            problems.push(format!(
                "{shown}: the new Dovecot shows UIDVALIDITY {uidvalidity} UIDNEXT {uidnext}, the carried uidlist says {valid} and {next}"
            ));
        }
    }
    problems
}

/// How the server names folders: its hierarchy separator and the prefix
/// of its inbox namespace.
struct Naming {
    prefix: &'static str,
    separator: char,
}

impl Naming {
    fn name(&self, f: &FolderFacts) -> String {
        match &f.name {
            None => "INBOX".into(),
            Some(n) => format!(
                "{}{}",
                self.prefix,
                n.levels().join(&self.separator.to_string())
            ),
        }
    }
}

/// The usual namespaces (Dovecot's default, and Courier's `INBOX.`), the
/// one under which the server shows most of the folders.
fn naming_of(seen: &HashMap<String, (u64, u32, u32)>, folders: &[FolderFacts]) -> Option<Naming> {
    let candidates = [("", '.'), ("", '/'), ("INBOX.", '.'), ("INBOX/", '/')];
    candidates
        .into_iter()
        .map(|(prefix, separator)| Naming { prefix, separator })
        .max_by_key(|n| {
            folders
                .iter()
                .filter(|f| seen.contains_key(&n.name(f)))
                .count()
        })
        .filter(|n| folders.iter().any(|f| seen.contains_key(&n.name(f))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(levels: &[&str], messages: u64, uids: Option<(u32, u32)>) -> FolderFacts {
        FolderFacts {
            name: (!levels.is_empty()).then(|| FolderName::from_levels(levels.to_vec()).unwrap()),
            messages,
            uids,
        }
    }

    #[test]
    fn status_output_is_compared_per_folder() {
        let out =
            "mailbox\tmessages\tuidnext\tuidvalidity\nArchive.2019\t2\t9\t77\nINBOX\t3\t12\t55\n";
        let ok = [
            facts(&[], 3, Some((55, 10))),
            facts(&["Archive", "2019"], 2, Some((77, 9))),
        ];
        assert!(
            check_status(out, &ok).is_empty(),
            "{:?}",
            check_status(out, &ok)
        );
        let bad = [
            facts(&[], 4, Some((56, 10))),
            facts(&["Sent"], 0, None),
            facts(&["Archive", "2019"], 2, Some((77, 10))),
        ];
        let p = check_status(out, &bad);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("shows 3 messages, 4 were copied"), "{p:?}");
        assert!(p[2].contains("does not show"), "{p:?}");
        assert!(p[3].contains("UIDNEXT 9"), "{p:?}");
        let slash = "mailbox\tmessages\tuidnext\tuidvalidity\nINBOX/Archive/2019\t2\t9\t77\nINBOX\t3\t12\t55\n";
        assert!(check_status(slash, &ok).is_empty());
    }
}
