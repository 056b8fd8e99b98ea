//! Asking the new Dovecot itself (`[verify] doveadm`): a file-level check
//! can pass while the server still cannot serve a mailbox (its auth process
//! cannot read the userdb, a setting hides the mail). So, after the switch:
//! does `doveadm user` find the user with the owner and home the switch
//! wrote, and does `doveadm mailbox status` show every copied folder with
//! as many messages, the carried UIDVALIDITY and at least the carried
//! UIDNEXT?

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::dovecot::{Doveadm, Namespace, Status};
use crate::maildir::names::FolderName;

use super::env::Mailbox;

/// What the target holds of one folder.
#[derive(Debug, Clone)]
pub(crate) struct FolderFacts {
    /// `None` for INBOX.
    pub name: Option<FolderName>,
    pub messages: u64,
    /// UIDVALIDITY and next UID of the carried uidlist.
    pub uids: Option<(u32, u32)>,
    /// HIGHESTMODSEQ the old server had (read before the switch).
    pub old_modseq: Option<u64>,
}

/// What the new server's clients will see against what the old server's
/// clients saw, where both are known.
pub(crate) enum Namespaces {
    Same,
    /// Not compared, and why.
    Unknown(String),
    /// They differ: the sentence saying how.
    Differ(String),
}

/// Compares the new server's inbox namespace with the old one's (Courier's
/// clients saw `INBOX.` and `.`; an old Dovecot's is read from its own
/// configuration). Clients that see other names re-download everything
/// and re-create every folder.
pub(crate) fn compare_namespaces(cfg: &Config) -> Namespaces {
    let Some(new) = &cfg.verify.doveadm else {
        return Namespaces::Unknown(
            "the new server's namespace is not checked ([verify] doveadm is not set)".into(),
        );
    };
    let Some(old) = cfg.source.clients_namespace() else {
        return Namespaces::Unknown(
            "what the old server's clients saw is not known ([source] doveadm is not set); the namespaces are not compared".into(),
        );
    };
    match (old, new.namespace(cfg.target.layout)) {
        (Ok(o), Ok(n)) if o == n => Namespaces::Same,
        (Ok(o), Ok(n)) => Namespaces::Differ(format!(
            "the new Dovecot ({}) shows folders with {n}, but the old server's clients saw {o}: every client would download everything again and re-create its folders; give the new Dovecot's inbox namespace prefix = {:?} and separator = {}",
            new.describe(),
            o.prefix,
            o.separator
        )),
        (Err(e), _) | (_, Err(e)) => {
            Namespaces::Differ(format!("cannot compare the namespaces: {e}"))
        }
    }
}

/// How long a server may take to see a userdb change: Dovecot re-reads a
/// passwd-file at most about once a second.
const SEEN_WITHIN: Duration = Duration::from_secs(5);

/// Asks `seen` every 200 ms until it says yes or `SEEN_WITHIN` has passed.
fn seen_within(mut seen: impl FnMut() -> Result<bool, String>) -> Result<bool, String> {
    let start = Instant::now();
    loop {
        if seen()? {
            return Ok(true);
        }
        if start.elapsed() >= SEEN_WITHIN {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the new server resolves a login just written. Its auth
/// cache is flushed first: a client that tried to log in before the
/// migration left a "no such user" there (a failed flush is harmless: no
/// cache, and the lookups say the rest).
pub(crate) fn wait_for_user(doveadm: &Doveadm, user: &str) -> Result<(), String> {
    let _ = doveadm.flush_auth_cache(user);
    if seen_within(|| Ok(doveadm.user(user)?.is_some()))? {
        return Ok(());
    }
    Err(format!(
        "the new Dovecot does not know the user {} s after its login was written",
        SEEN_WITHIN.as_secs()
    ))
}

/// Waits until the old server refuses a frozen login: its auth cache
/// flushed (a cached login would keep working for `auth_cache_ttl`), then
/// until its passdb shows the freeze (`seen`).
pub(crate) fn wait_for_freeze(
    doveadm: &Doveadm,
    user: &str,
    seen: impl Fn(Option<&HashMap<String, String>>) -> bool,
) -> Result<(), String> {
    doveadm.flush_auth_cache(user)?;
    if seen_within(|| Ok(seen(doveadm.passdb(user)?.as_ref())))? {
        return Ok(());
    }
    Err(format!(
        "the old Dovecot still accepts the login {} s after it was refused in its userdb",
        SEEN_WITHIN.as_secs()
    ))
}

/// Waits until the old server has no session of `user` left: the freeze
/// command ended them, and a session that was finishing a command has
/// written it (Dovecot drops a session from `doveadm who` as it ends).
pub(crate) fn wait_for_sessions_to_end(doveadm: &Doveadm, user: &str) -> Result<(), String> {
    if seen_within(|| Ok(doveadm.sessions(user)? == 0))? {
        return Ok(());
    }
    Err(format!(
        "{} session(s) still open on the old Dovecot {} s after the freeze command",
        doveadm.sessions(user)?,
        SEEN_WITHIN.as_secs()
    ))
}

/// Raises every folder's HIGHESTMODSEQ on the new server to at least the
/// old server's: a CONDSTORE/QRESYNC client that remembers the old value
/// must see every later change (RFC 7162 forbids going backwards while
/// UIDVALIDITY stays).
pub(crate) fn raise_modseqs(
    doveadm: &Doveadm,
    ns: &Namespace,
    mb: &Mailbox,
    folders: &[FolderFacts],
) -> Result<(), String> {
    for f in folders {
        if let Some(m) = f.old_modseq {
            doveadm.raise_modseq(&mb.target_key, &ns.name(f.name.as_ref()), m)?;
        }
    }
    Ok(())
}

/// Every disagreement between the new server and what was copied.
pub(crate) fn check(
    doveadm: &Doveadm,
    ns: &Namespace,
    mb: &Mailbox,
    home: Option<&str>,
    folders: &[FolderFacts],
) -> Vec<String> {
    let mut problems = match doveadm.user(&mb.target_key) {
        Ok(Some(fields)) => check_user(&fields, mb, home),
        Ok(None) => return vec!["the new Dovecot does not know the user".into()],
        Err(e) => return vec![e],
    };
    match doveadm.status(&mb.target_key, "messages uidvalidity uidnext highestmodseq") {
        Ok(status) => problems.extend(check_status(&status, ns, folders)),
        Err(e) => problems.push(e),
    }
    problems
}

fn check_user(fields: &HashMap<String, String>, mb: &Mailbox, home: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut wanted = vec![
        ("uid", mb.owner.uid.to_string()),
        ("gid", mb.owner.gid.to_string()),
    ];
    wanted.extend(home.map(|h| ("home", h.to_string())));
    for (field, want) in wanted {
        let got = fields.get(field).map(String::as_str).unwrap_or_default();
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

/// Every copied folder, under the server's name for it, with as many
/// messages, the carried UIDVALIDITY, at least the carried UIDNEXT, and
/// at least the old HIGHESTMODSEQ.
fn check_status(status: &Status, ns: &Namespace, folders: &[FolderFacts]) -> Vec<String> {
    let num = |fields: &HashMap<String, String>, k: &str| {
        fields
            .get(k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut problems = Vec::new();
    for f in folders {
        let name = ns.name(f.name.as_ref());
        let Some(fields) = status.get(&name) else {
            problems.push(format!(
                "{}: the new Dovecot does not show this folder",
                crate::shown::text(&name)
            ));
            continue;
        };
        let (messages, uidnext, uidvalidity) = (
            num(fields, "messages"),
            num(fields, "uidnext"),
            num(fields, "uidvalidity"),
        );
        let shown = crate::shown::text(&name);
        if messages != f.messages {
            problems.push(format!(
                "{shown}: the new Dovecot shows {messages} messages, {} were copied",
                f.messages
            ));
        }
        if let Some((valid, next)) = f.uids
            && (uidvalidity != u64::from(valid) || uidnext < u64::from(next))
        {
            problems.push(format!(
                "{shown}: the new Dovecot shows UIDVALIDITY {uidvalidity} UIDNEXT {uidnext}, the carried uidlist says {valid} and {next}"
            ));
        }
        let modseq = num(fields, "highestmodseq");
        if let Some(old) = f.old_modseq
            && modseq < old
        {
            problems.push(format!(
                "{shown}: HIGHESTMODSEQ {modseq} on the new Dovecot, {old} on the old one"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        levels: &[&str],
        messages: u64,
        uids: Option<(u32, u32)>,
        old: Option<u64>,
    ) -> FolderFacts {
        FolderFacts {
            name: (!levels.is_empty()).then(|| FolderName::from_levels(levels.to_vec()).unwrap()),
            messages,
            uids,
            old_modseq: old,
        }
    }

    fn status(lines: &[(&str, u64, u64, u64, u64)]) -> Status {
        lines
            .iter()
            .map(|&(name, m, next, valid, modseq)| {
                let fields = [
                    ("messages", m),
                    ("uidnext", next),
                    ("uidvalidity", valid),
                    ("highestmodseq", modseq),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
                (name.to_string(), fields)
            })
            .collect()
    }

    #[test]
    fn status_is_compared_per_folder() {
        let ns = Namespace {
            prefix: String::new(),
            separator: '.',
        };
        let st = status(&[("Archive.2019", 2, 9, 77, 5), ("INBOX", 3, 12, 55, 40)]);
        let ok = [
            facts(&[], 3, Some((55, 10)), Some(40)),
            facts(&["Archive", "2019"], 2, Some((77, 9)), None),
        ];
        assert!(
            check_status(&st, &ns, &ok).is_empty(),
            "{:?}",
            check_status(&st, &ns, &ok)
        );
        let bad = [
            facts(&[], 4, Some((56, 10)), Some(41)),
            facts(&["Sent"], 0, None, None),
            facts(&["Archive", "2019"], 2, Some((77, 10)), None),
        ];
        let p = check_status(&st, &ns, &bad);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("shows 3 messages, 4 were copied"), "{p:?}");
        assert!(p[1].contains("UIDVALIDITY 55"), "{p:?}");
        assert!(
            p[2].contains("HIGHESTMODSEQ 40 on the new Dovecot, 41"),
            "{p:?}"
        );
        assert!(p[3].contains("does not show"), "{p:?}");
        assert!(p[4].contains("UIDNEXT 9"), "{p:?}");
    }
}
