//! What is deliberately not migrated: Trash, Spam and Contacts folders,
//! found by exact (case-insensitive) name in many languages, plus the
//! administrator's own lists.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use crate::maildir::names::FolderName;

/// What a skipped folder becomes in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkippedFolders {
    /// Created empty, with its old UIDVALIDITY and next UID and its
    /// subscription: a client that synced it sees its messages expunged
    /// (and drops its local copies) instead of a folder that vanished,
    /// which clients re-create and refill from their copies.
    Empty,
    /// Left out.
    Absent,
}

/// Trash folder names: English, Czech, Slovak, German, Polish, French,
/// Spanish, Italian, and the defaults of common clients.
const TRASH: &[&str] = &[
    "Trash",
    "Deleted",
    "Deleted Items",
    "Deleted Messages",
    "Bin",
    "[Gmail]/Trash",
    "[Gmail]/Bin",
    "Koš",
    "Odstraněná pošta",
    "Odstraněné položky",
    "Kôš",
    "Odstránená pošta",
    "Odstránené položky",
    "Papierkorb",
    "Gelöscht",
    "Gelöschte Elemente",
    "Gelöschte Objekte",
    "Gelöschte Nachrichten",
    "Kosz",
    "Elementy usunięte",
    "Usunięte",
    "Corbeille",
    "Éléments supprimés",
    "Messages supprimés",
    "Papelera",
    "Elementos eliminados",
    "Elementos borrados",
    "Cestino",
    "Posta eliminata",
    "Elementi eliminati",
];

const SPAM: &[&str] = &[
    "Spam",
    "Junk",
    "Junk E-mail",
    "Junk Email",
    "Junk Mail",
    "Bulk Mail",
    "[Gmail]/Spam",
    "Nevyžádaná pošta",
    "Nevyžiadaná pošta",
    "Junk-E-Mail",
    "Unerwünscht",
    "Wiadomości-śmieci",
    "Śmieci",
    "Courrier indésirable",
    "Indésirables",
    "Pourriel",
    "Correo no deseado",
    "No deseado",
    "Posta indesiderata",
    "Indesiderata",
];

const CONTACTS: &[&str] = &[
    "Contacts",
    "Address Book",
    "Addressbook",
    "Suggested Contacts",
    "Kontakty",
    "Adresář",
    "Kontakte",
    "Adressbuch",
    "Książka adresowa",
    "Carnet d'adresses",
    "Contactos",
    "Contatti",
    "Rubrica",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Trash,
    Spam,
    Contacts,
    /// Listed in `skip_folders`.
    Configured,
    /// Below a skipped folder (named here).
    InsideSkipped(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Trash => f.write_str("trash folder (not migrated)"),
            SkipReason::Spam => f.write_str("spam folder (not migrated)"),
            SkipReason::Contacts => f.write_str("contacts folder (not migrated)"),
            SkipReason::Configured => f.write_str("listed in skip_folders"),
            SkipReason::InsideSkipped(p) => write!(f, "inside skipped folder {p:?}"),
        }
    }
}

/// Decides per folder whether it is copied.
#[derive(Debug, Clone)]
pub struct Classifier {
    builtin: Vec<(String, SkipReason)>,
    skip: HashSet<String>,
    keep: HashSet<String>,
}

/// Comparison key: `/`-joined, lower-cased, without a leading `INBOX/`
/// (Courier-style trees keep folders below INBOX).
fn key(levels: &[String]) -> String {
    let levels = match levels {
        [first, rest @ ..] if !rest.is_empty() && first.eq_ignore_ascii_case("INBOX") => rest,
        all => all,
    };
    levels.join("/").to_lowercase()
}

fn key_of_config(name: &str) -> String {
    let levels: Vec<String> = name.split('/').map(str::to_string).collect();
    key(&levels)
}

impl Classifier {
    /// `skip` and `keep` are `/`-separated folder names from the config.
    pub fn new(skip: &[String], keep: &[String]) -> Classifier {
        let builtin = [
            (TRASH, SkipReason::Trash),
            (SPAM, SkipReason::Spam),
            (CONTACTS, SkipReason::Contacts),
        ]
        .iter()
        .flat_map(|(names, reason)| {
            names
                .iter()
                .map(move |n| (key_of_config(n), reason.clone()))
        })
        .collect();
        Classifier {
            builtin,
            skip: skip.iter().map(|s| key_of_config(s)).collect(),
            keep: keep.iter().map(|s| key_of_config(s)).collect(),
        }
    }

    fn own_reason(&self, name: &FolderName) -> Option<SkipReason> {
        let k = key(name.levels());
        if self.keep.contains(&k) {
            return None;
        }
        if self.skip.contains(&k) {
            return Some(SkipReason::Configured);
        }
        self.builtin
            .iter()
            .find(|(b, _)| *b == k)
            .map(|(_, r)| r.clone())
    }

    /// `None` = copy; otherwise why the folder is skipped. A skipped
    /// folder takes its subfolders with it unless a subfolder is in
    /// `keep_folders` itself.
    pub fn classify(&self, name: &FolderName) -> Option<SkipReason> {
        if self.keep.contains(&key(name.levels())) {
            return None;
        }
        for anc in name.ancestors_and_self() {
            if let Some(r) = self.own_reason(&anc) {
                return Some(if anc == *name {
                    r
                } else {
                    SkipReason::InsideSkipped(anc.to_string())
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> FolderName {
        FolderName::from_levels(s.split('/')).unwrap()
    }

    fn c() -> Classifier {
        Classifier::new(
            &["Archive/Old Spam".into(), "Newsletters".into()],
            &["Junk".into()],
        )
    }

    #[test]
    fn builtin_lists_match_exactly_and_case_insensitively() {
        let c = c();
        assert_eq!(c.classify(&name("Trash")), Some(SkipReason::Trash));
        assert_eq!(c.classify(&name("TRASH")), Some(SkipReason::Trash));
        assert_eq!(c.classify(&name("koš")), Some(SkipReason::Trash));
        assert_eq!(c.classify(&name("Deleted Items")), Some(SkipReason::Trash));
        assert_eq!(
            c.classify(&name("Nevyžádaná pošta")),
            Some(SkipReason::Spam)
        );
        assert_eq!(c.classify(&name("Junk E-mail")), Some(SkipReason::Spam));
        assert_eq!(c.classify(&name("Bulk Mail")), Some(SkipReason::Spam));
        assert_eq!(
            c.classify(&name("Address Book")),
            Some(SkipReason::Contacts)
        );
        assert_eq!(c.classify(&name("Kontakty")), Some(SkipReason::Contacts));
        assert_eq!(c.classify(&name("INBOX/Trash")), Some(SkipReason::Trash));
        assert_eq!(c.classify(&name("[Gmail]/Spam")), Some(SkipReason::Spam));
    }

    #[test]
    fn look_alikes_are_kept() {
        let c = c();
        for n in [
            "Trash 2020",
            "Spam reports",
            "Sent",
            "Archive/Trash",
            "Kontakty staré",
            "Koše",
        ] {
            assert_eq!(c.classify(&name(n)), None, "{n}");
        }
    }

    #[test]
    fn subfolders_go_with_their_parent() {
        let c = c();
        assert_eq!(
            c.classify(&name("Trash/2020/Jan")),
            Some(SkipReason::InsideSkipped("Trash".into()))
        );
        assert_eq!(
            c.classify(&name("Newsletters/Weekly")),
            Some(SkipReason::InsideSkipped("Newsletters".into()))
        );
    }

    #[test]
    fn config_lists_extend_and_override() {
        let c = c();
        assert_eq!(
            c.classify(&name("archive/old spam")),
            Some(SkipReason::Configured)
        );
        assert_eq!(c.classify(&name("Junk")), None);
        assert_eq!(c.classify(&name("Junk/2020")), None);
        let keep_child = Classifier::new(&[], &["Trash/Important".into()]);
        assert_eq!(keep_child.classify(&name("Trash/Important")), None);
    }
}
