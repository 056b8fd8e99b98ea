//! `courierimapuiddb`: Courier's UID map, converted to a `dovecot-uidlist`
//! that Dovecot keeps.
//!
//! ```text
//! 1 <uidvalidity> <nextuid>
//! <uid> <base>
//! ```
//!
//! Only version 1 exists. Courier reads the records in any order, matches
//! them to the files by base name and shows messages sorted by UID; new
//! files get UIDs from `<nextuid>` in file-name order. Dovecot is stricter
//! (see [`crate::maildir::uidlist`]): one bad line makes it discard the
//! rest of the file and renumber silently. So the conversion repairs
//! instead of copying: it keeps every UID it can and gives the rest new
//! ones, and says which.

use super::{num, numbered_lines, shown};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;

use super::pop3::Pop3List;
use crate::maildir::uidlist::{self, Record, Uidlist};
use crate::maildir::{filename, split_once};

/// The longest line accepted, without its LF: `<uid> <base>` is a uidlist
/// line without extension fields, so the uidlist's cap is generous here too.
pub const MAX_LINE: usize = uidlist::MAX_LINE;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("courierimapuiddb line {line}: {problem}")]
pub struct UiddbError {
    pub line: usize,
    pub problem: String,
}

fn err(line: usize, problem: impl Into<String>) -> UiddbError {
    UiddbError {
        line,
        problem: problem.into(),
    }
}

/// One record as written, UID not yet checked: Courier reads UIDs as
/// `unsigned long`, so 0 and values Dovecot cannot hold do occur in
/// damaged files and are repaired by [`to_uidlist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiddbRecord {
    pub line: usize,
    pub uid: u64,
    pub base: Vec<u8>,
}

/// A parsed `courierimapuiddb`. The UIDVALIDITY is non-zero and fits
/// Dovecot's 32 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uiddb {
    uid_validity: u32,
    next_uid: u64,
    records: Vec<UiddbRecord>,
    skipped: Vec<UiddbError>,
}

impl Uiddb {
    pub fn uid_validity(&self) -> u32 {
        self.uid_validity
    }
    /// The header's next UID, as written (may be below the highest UID).
    #[cfg(test)]
    pub fn next_uid(&self) -> u64 {
        self.next_uid
    }
    /// Records in file order.
    pub fn records(&self) -> &[UiddbRecord] {
        &self.records
    }
    /// Lines that were not records (Courier ignores them too).
    #[cfg(test)]
    pub fn skipped(&self) -> &[UiddbError] {
        &self.skipped
    }
}

/// Parses a `courierimapuiddb`. A missing, garbled, over-long or
/// non-version-1 header is an error (Courier itself would start over with a
/// new UIDVALIDITY); unreadable or over-long record lines are skipped and
/// listed.
pub fn parse(data: &[u8]) -> Result<Uiddb, UiddbError> {
    let mut lines = numbered_lines(data);
    let (_, head) = lines
        .next()
        .filter(|(_, l)| !l.is_empty())
        .ok_or_else(|| err(1, "empty file"))?;
    let (uid_validity, next_uid) = header(head)?;
    let mut db = Uiddb {
        uid_validity,
        next_uid,
        records: Vec::new(),
        skipped: Vec::new(),
    };
    for (no, line) in lines.filter(|(_, l)| !l.is_empty()) {
        match record(no, line) {
            Ok(r) => db.records.push(r),
            Err(e) => db.skipped.push(e),
        }
    }
    Ok(db)
}

fn too_long() -> String {
    format!("longer than {MAX_LINE} bytes, not a uiddb line")
}

/// `1 <uidvalidity> <nextuid>`: the UIDVALIDITY and the next UID.
fn header(head: &[u8]) -> Result<(u32, u64), UiddbError> {
    if head.len() > MAX_LINE {
        return Err(err(1, too_long()));
    }
    let broken = || {
        err(
            1,
            format!(
                "broken header {:?}: expected `1 <uidvalidity> <nextuid>`",
                shown(head)
            ),
        )
    };
    let fields: Vec<&[u8]> = head
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    match fields.first().map(|v| &v[..]) {
        Some(b"1") => {}
        Some(v) if num(v).is_some() => {
            return Err(err(1, format!("unsupported version {}", shown(v))));
        }
        _ => return Err(broken()),
    }
    let [_, v, n] = fields[..] else {
        return Err(broken());
    };
    let (Some(v), Some(next_uid)) = (num(v), num(n)) else {
        return Err(broken());
    };
    match u32::try_from(v) {
        Ok(v) if v != 0 => Ok((v, next_uid)),
        _ => Err(err(
            1,
            format!("UIDVALIDITY {v} cannot be kept (Dovecot needs 1..2^32-1)"),
        )),
    }
}

/// `<uid> <base>` on line `no`, or why the line is skipped.
fn record(no: usize, line: &[u8]) -> Result<UiddbRecord, UiddbError> {
    if line.len() > MAX_LINE {
        return Err(err(no, too_long()));
    }
    let Some((uid, name)) = split_once(line, b' ') else {
        return Err(err(
            no,
            format!("record without a file name: {:?}", shown(line)),
        ));
    };
    let Some(uid) = num(uid) else {
        return Err(err(no, format!("unreadable UID in {:?}", shown(line))));
    };
    // Courier stores the base; older tools wrote the full name.
    let base = filename::base(name);
    if base.is_empty() || base.contains(&b'/') {
        return Err(err(no, format!("invalid file name in {:?}", shown(line))));
    }
    Ok(UiddbRecord {
        line: no,
        uid,
        base: base.to_vec(),
    })
}

/// The result of [`to_uidlist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// Ready to write as `dovecot-uidlist` (version 3).
    pub uidlist: Uidlist,
    /// The UIDVALIDITY written (the old one unless it had to change).
    pub uid_validity: u32,
    /// Messages that kept their Courier UID.
    pub kept: usize,
    /// Messages that got a new UID, with it, in UID order.
    pub renumbered: Vec<(Vec<u8>, u32)>,
    pub warnings: Vec<String>,
}

/// Collects one warning per kind of problem, with a count and examples,
/// so a badly damaged file gives a readable report.
#[derive(Default)]
struct Tally {
    kinds: Vec<(&'static str, usize, Vec<String>)>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, example: impl fmt::Display) {
        let pos = match self.kinds.iter().position(|(k, _, _)| *k == kind) {
            Some(p) => p,
            None => {
                self.kinds.push((kind, 0, Vec::new()));
                self.kinds.len() - 1
            }
        };
        let Some((_, count, examples)) = self.kinds.get_mut(pos) else {
            return;
        };
        *count += 1;
        // Up to three examples, fewer when they are long: one warning line
        // stays short however long the names are.
        let example = example.to_string();
        let room = examples.iter().map(String::len).sum::<usize>() + example.len() <= 400;
        if examples.is_empty() || (examples.len() < 3 && room) {
            examples.push(example);
        }
    }

    fn into_warnings(self, out: &mut Vec<String>) {
        for (kind, count, examples) in self.kinds {
            let more = if count > examples.len() { ", …" } else { "" };
            out.push(format!("{count} × {kind} ({}{more})", examples.join("; ")));
        }
    }
}

/// True for a base name that can stand in a `dovecot-uidlist` line and
/// names a message Dovecot sees.
fn listable(base: &[u8]) -> bool {
    filename::is_message_name(base) && !base.iter().any(|&b| matches!(b, b':' | b'\n' | b'\r'))
}

/// Builds the `dovecot-uidlist` for one folder.
///
/// * `db`: the parsed `courierimapuiddb`, if the folder had a usable one.
/// * `present`: base names of the messages now in `cur/` and `new/`, in
///   Courier's order (sorted by file name); new UIDs follow this order.
/// * `pop3`: the root folder's `courierpop3dsizelist`, to keep POP3 UIDLs.
/// * `now`: UIDVALIDITY when there is no db (a POP3-only folder).
///
/// Records of messages that no longer exist are dropped; every present
/// message gets exactly one record with a UID below 2^32-1, strictly
/// increasing, so Dovecot keeps the whole file.
pub fn to_uidlist(
    db: Option<&Uiddb>,
    present: &[Vec<u8>],
    pop3: Option<&Pop3List>,
    now: u32,
) -> Conversion {
    let mut warnings = Vec::new();
    let mut tally = Tally::default();
    let (order, seen) = listed(present, &mut tally);
    let mut uid_validity = db.map_or(now.max(1), Uiddb::uid_validity);
    let (candidates, next) = match db {
        Some(db) => candidates(db, &seen, &mut tally),
        None => (Vec::new(), 1),
    };
    let mut assigned = unique_uids(candidates, &mut warnings, &mut tally);
    let newcomers: Vec<&[u8]> = order
        .iter()
        .copied()
        .filter(|b| !assigned.contains_key(b))
        .collect();
    // The last UID must stay below 2^32-1 with room for Dovecot's next one.
    let fits = next
        .checked_add(newcomers.len() as u64)
        .is_some_and(|end| end < u64::from(u32::MAX));
    let (renumbered, next) = if fits {
        number_from(next, &newcomers, &mut assigned)
    } else {
        // Out of UIDs: start over like a new mailbox. Clients resync once.
        let old = uid_validity;
        uid_validity = if now > old {
            now
        } else {
            old.wrapping_add(1).max(1)
        };
        warnings.push(format!(
            "UIDs exhausted (next UID {next}); all {} messages renumbered from 1 with new UIDVALIDITY {uid_validity} (was {old})",
            order.len()
        ));
        assigned.clear();
        number_from(1, &order, &mut assigned)
    };
    let kept = order.len().saturating_sub(renumbered.len());

    // Both are non-zero and `next` < 2^32-1 here; the fallbacks only keep
    // this free of panics.
    let v = NonZeroU32::new(uid_validity).unwrap_or(NonZeroU32::MIN);
    let n = u32::try_from(next)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN);
    let mut uidlist = Uidlist::new(v, n);
    uidlist.records = records(&order, &assigned, pop3);

    tally.into_warnings(&mut warnings);
    Conversion {
        uidlist,
        uid_validity,
        kept,
        renumbered,
        warnings,
    }
}

/// The messages to list, in the caller's order, each once, and the set
/// of them.
fn listed<'a>(present: &'a [Vec<u8>], tally: &mut Tally) -> (Vec<&'a [u8]>, HashSet<&'a [u8]>) {
    let mut order: Vec<&[u8]> = Vec::with_capacity(present.len());
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(present.len());
    for base in present {
        if !listable(base) {
            tally.add(
                "message name Dovecot cannot list, left without a record",
                format!("{:?}", shown(base)),
            );
        } else if !seen.insert(base) {
            tally.add(
                "message given twice, listed once",
                format!("{:?}", shown(base)),
            );
        } else {
            order.push(base);
        }
    }
    (order, seen)
}

/// The uiddb's (uid, base) pairs of present messages, in file order, and
/// the first UID never given.
fn candidates<'a>(
    db: &'a Uiddb,
    seen: &HashSet<&[u8]>,
    tally: &mut Tally,
) -> (Vec<(u32, &'a [u8])>, u64) {
    let mut next = db.next_uid.max(1);
    for e in &db.skipped {
        tally.add("unreadable uiddb line ignored", e);
    }
    let mut candidates = Vec::new();
    let mut claimed: HashSet<&[u8]> = HashSet::new();
    for r in &db.records {
        let uid = match u32::try_from(r.uid) {
            Ok(u) if u != 0 && u != u32::MAX => u,
            _ => {
                if seen.contains(&r.base[..]) {
                    tally.add(
                        "UID outside 1..2^32-2 ignored",
                        format!("line {}: {}", r.line, r.uid),
                    );
                }
                continue;
            }
        };
        // A UID once given is never given again, even if its message
        // is gone: a client may still cache it.
        next = next.max(u64::from(uid) + 1);
        if !seen.contains(&r.base[..]) {
            continue;
        }
        if !claimed.insert(&r.base[..]) {
            tally.add(
                "file listed twice in uiddb, first UID kept",
                format!("line {}: {:?}", r.line, shown(&r.base)),
            );
            continue;
        }
        candidates.push((uid, &r.base[..]));
    }
    (candidates, next)
}

/// The UIDs kept: each candidate's, unless an earlier message has it.
fn unique_uids<'a>(
    mut candidates: Vec<(u32, &'a [u8])>,
    warnings: &mut Vec<String>,
    tally: &mut Tally,
) -> HashMap<&'a [u8], u32> {
    // Courier shows messages sorted by UID whatever the line order, so
    // sorting loses nothing; only a UID used twice is a real conflict.
    if candidates
        .windows(2)
        .any(|w| matches!(w, [a, b] if a.0 > b.0))
    {
        warnings.push("uiddb records were not in UID order; sorted, UIDs kept".to_string());
    }
    candidates.sort_by_key(|&(uid, _)| uid);
    let mut assigned = HashMap::with_capacity(candidates.len());
    let mut last = 0;
    for (uid, base) in candidates {
        if uid == last {
            tally.add(
                "UID used by two messages, the second renumbered",
                format!("{uid}: {:?}", shown(base)),
            );
            continue;
        }
        last = uid;
        assigned.insert(base, uid);
    }
    assigned
}

/// Gives `bases` the UIDs from `first` on (the caller checked they fit):
/// the new (base, UID) pairs and the next UID.
fn number_from<'a>(
    first: u64,
    bases: &[&'a [u8]],
    assigned: &mut HashMap<&'a [u8], u32>,
) -> (Vec<(Vec<u8>, u32)>, u64) {
    let mut renumbered = Vec::with_capacity(bases.len());
    let mut uid = first as u32;
    for &base in bases {
        assigned.insert(base, uid);
        renumbered.push((base.to_vec(), uid));
        uid += 1;
    }
    (renumbered, u64::from(uid))
}

/// The uidlist records in UID order, with Courier's POP3 order and UIDL.
fn records(
    order: &[&[u8]],
    assigned: &HashMap<&[u8], u32>,
    pop3: Option<&Pop3List>,
) -> Vec<Record> {
    let pop3_by_base: HashMap<&[u8], &super::pop3::Pop3Entry> = pop3
        .map(|l| l.entries.iter().map(|e| (&e.base[..], e)).collect())
        .unwrap_or_default();
    // Every listed message was assigned a UID.
    let mut records: Vec<Record> = order
        .iter()
        .filter_map(|base| {
            let uid = *assigned.get(base)?;
            let mut ext = Vec::new();
            if let Some(p) = pop3_by_base.get(base) {
                // `O` keeps Courier's POP3 message order and `P` the UIDL
                // clients know. No `W`: Courier's POP3 size adds 2 when the
                // file lacks a final newline, so it is not always Dovecot's
                // vsize, and Dovecot trusts `W` blindly (a wrong one breaks
                // FETCH). Dovecot computes the vsize itself.
                ext.push((b'O', p.order.to_string().into_bytes()));
                ext.push((b'P', p.uidl.clone().into_bytes()));
            }
            Some(Record {
                uid,
                ext,
                name: base.to_vec(),
            })
        })
        .collect();
    records.sort_by_key(|r| r.uid);
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::courier::pop3;
    use proptest::prelude::*;

    fn names(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn text(c: &Conversion) -> String {
        String::from_utf8(c.uidlist.to_bytes()).unwrap()
    }

    const COURIER: &[u8] = b"1 795946536 4\n\
1 1795946536.M214144P12870V000000000000FE00I000000000098C903_0.vm,S=118\n\
2 1795946536.M215247P12870V000000000000FE00I000000000098C910_1.vm,S=132\n\
3 1795946536.M216618P12870V000000000000FE00I000000000098C914_2.vm,S=69\n";

    #[test]
    fn parses_courier_5() {
        let db = parse(COURIER).unwrap();
        assert_eq!(db.uid_validity(), 795946536);
        assert_eq!(db.next_uid(), 4);
        assert_eq!(db.records().len(), 3);
        assert_eq!(db.records()[2].uid, 3);
        assert_eq!(db.records()[2].line, 4);
        assert!(db.skipped().is_empty());
    }

    #[test]
    fn header_errors() {
        for (data, text) in [
            (&b""[..], "empty"),
            (b"\n1 2\n", "empty"),
            (b"2 5 6\n", "unsupported version 2"),
            (b"1 5\n", "broken header"),
            (b"1 5 6 7\n", "broken header"),
            (b"1 x 6\n", "broken header"),
            (b"v1 5 6\n", "broken header"),
            (b"1 0 6\n", "UIDVALIDITY 0"),
            (b"1 4294967296 6\n", "UIDVALIDITY 4294967296"),
            (b"1 5 99999999999999999999999\n", "broken header"),
        ] {
            let e = parse(data).unwrap_err();
            assert_eq!(e.line, 1);
            assert!(e.problem.contains(text), "{e}");
        }
    }

    #[test]
    fn garbled_records_are_skipped() {
        let db = parse(b"1 7 9\r\n3 a\r\nnospace\nx b\n4 \n5 c/d\n\n6 e:2,S\n7 f g\n").unwrap();
        let recs: Vec<(u64, &[u8])> = db.records().iter().map(|r| (r.uid, &r.base[..])).collect();
        assert_eq!(recs, vec![(3, &b"a"[..]), (6, b"e"), (7, b"f g")]);
        let lines: Vec<usize> = db.skipped().iter().map(|e| e.line).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
    }

    #[test]
    fn keeps_uids_and_numbers_new_messages() {
        let db = parse(b"1 777 10\n2 a\n5 b\n7 gone\n").unwrap();
        let c = to_uidlist(Some(&db), &names(&["a", "b", "new1", "new2"]), None, 1);
        assert_eq!(text(&c), "3 V777 N12\n2 :a\n5 :b\n10 :new1\n11 :new2\n");
        assert_eq!(c.kept, 2);
        assert_eq!(
            c.renumbered,
            vec![(b"new1".to_vec(), 10), (b"new2".to_vec(), 11)]
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn next_uid_covers_every_recorded_uid() {
        // The header is too low and the highest UID belongs to a deleted
        // message: neither may be reused.
        let db = parse(b"1 777 2\n2 a\n9 gone\n").unwrap();
        let c = to_uidlist(Some(&db), &names(&["a", "n"]), None, 1);
        assert_eq!(text(&c), "3 V777 N11\n2 :a\n10 :n\n");
    }

    #[test]
    fn repairs_what_dovecot_would_discard() {
        let db =
            parse(b"1 777 5\n3 c\n1 a\n3 d\n0 z\n4294967295 m\n99999999999 h\n2 b\n2 b\n").unwrap();
        let present = names(&["a", "b", "c", "d", "h", "m", "z"]);
        let c = to_uidlist(Some(&db), &present, None, 1);
        assert_eq!(
            text(&c),
            "3 V777 N9\n1 :a\n2 :b\n3 :c\n5 :d\n6 :h\n7 :m\n8 :z\n"
        );
        assert_eq!(c.kept, 3);
        let renumbered: Vec<(&[u8], u32)> =
            c.renumbered.iter().map(|(b, u)| (&b[..], *u)).collect();
        assert_eq!(
            renumbered,
            vec![(&b"d"[..], 5), (b"h", 6), (b"m", 7), (b"z", 8)]
        );
        let all = c.warnings.join("\n");
        assert!(all.contains("not in UID order"), "{all}");
        assert!(all.contains("1 × UID used by two"), "{all}");
        assert!(all.contains("3 × UID outside"), "{all}");
        assert!(all.contains("1 × file listed twice"), "{all}");
        assert!(Uidlist::parse(&c.uidlist.to_bytes()).is_ok());
    }

    #[test]
    fn empty_folder_keeps_uidvalidity_and_next_uid() {
        let db = parse(b"1 777 42\n41 gone\n").unwrap();
        let c = to_uidlist(Some(&db), &[], None, 1);
        assert_eq!(text(&c), "3 V777 N42\n");
        assert_eq!((c.kept, c.renumbered.len()), (0, 0));
    }

    #[test]
    fn without_db_uses_now() {
        let c = to_uidlist(None, &names(&["x", "y"]), None, 1_800_000_000);
        assert_eq!(text(&c), "3 V1800000000 N3\n1 :x\n2 :y\n");
        assert_eq!(c.uid_validity, 1_800_000_000);
        let c = to_uidlist(None, &[], None, 0);
        assert_eq!(text(&c), "3 V1 N1\n");
    }

    #[test]
    fn pop3_fields() {
        let db = parse(b"1 777 3\n1 a\n2 b\n").unwrap();
        let p = pop3::parse(b"/3 9 555\na:2,S 100 4:555:0\npoponly 7 5:555:0\ngone 1 6:555:0\n")
            .unwrap();
        let c = to_uidlist(Some(&db), &names(&["a", "b", "poponly"]), Some(&p), 1);
        assert_eq!(
            text(&c),
            "3 V777 N4\n1 O1 PUID4-555 :a\n2 :b\n3 O2 PUID5-555 :poponly\n"
        );
        // POP3 only: no uiddb at all.
        let c = to_uidlist(None, &names(&["a", "poponly"]), Some(&p), 1_800_000_000);
        assert_eq!(
            text(&c),
            "3 V1800000000 N3\n1 O1 PUID4-555 :a\n2 O2 PUID5-555 :poponly\n"
        );
    }

    #[test]
    fn unlistable_names_and_repeats() {
        let c = to_uidlist(
            None,
            &names(&["a", "", ".hidden", "x:y", "l\nf", "a"]),
            None,
            5,
        );
        assert_eq!(text(&c), "3 V5 N2\n1 :a\n");
        let all = c.warnings.join("\n");
        assert!(
            all.contains("4 × message name Dovecot cannot list"),
            "{all}"
        );
        assert!(all.contains("1 × message given twice"), "{all}");
    }

    #[test]
    fn exhausted_uids_start_over() {
        let db = parse(b"1 777 4294967294\n4294967293 a\n").unwrap();
        let c = to_uidlist(Some(&db), &names(&["a"]), None, 1);
        assert_eq!(text(&c), "3 V777 N4294967294\n4294967293 :a\n");
        let c = to_uidlist(Some(&db), &names(&["a", "b"]), None, 1_800_000_000);
        assert_eq!(text(&c), "3 V1800000000 N3\n1 :a\n2 :b\n");
        assert_eq!(c.kept, 0);
        assert_eq!(c.renumbered.len(), 2);
        assert!(c.warnings[0].contains("exhausted"), "{:?}", c.warnings);
        // `now` not newer than the old value: still a different one.
        let c = to_uidlist(Some(&db), &names(&["a", "b"]), None, 5);
        assert_eq!(c.uid_validity, 778);
    }

    #[test]
    fn over_long_lines() {
        let name = |len: usize| vec![b'x'; len - 2];
        let data = [
            &b"1 7 9\n1 "[..],
            &name(MAX_LINE),
            b"\n2 ",
            &name(MAX_LINE + 1),
            b"\n3 c\n",
        ]
        .concat();
        let db = parse(&data).unwrap();
        let uids: Vec<u64> = db.records().iter().map(|r| r.uid).collect();
        assert_eq!(uids, [1, 3]);
        assert_eq!(db.skipped()[0].line, 3);
        assert!(db.skipped()[0].problem.contains("longer than 8192"));
        let head = [&b"1 7 "[..], &vec![b'9'; MAX_LINE]].concat();
        assert!(parse(&head).unwrap_err().problem.contains("longer than"));
    }

    #[test]
    fn huge_garbage_gives_brief_messages() {
        let garbage = b"\x1b[31m\x00\t\r\xc3\xa9\xff".repeat(5 << 17);
        let near_cap = &garbage[..MAX_LINE - 10];
        let mut messages = Vec::new();
        for data in [
            garbage.clone(),
            [&b"1 "[..], near_cap].concat(),
            [near_cap, b" 5 6"].concat(),
        ] {
            messages.push(parse(&data).unwrap_err().to_string());
        }
        let records = [
            &b"1 7 9\n"[..],
            &garbage,
            b"\n",
            near_cap,
            b"\n",
            near_cap,
            b" a\n1 /",
            near_cap,
        ]
        .concat();
        let db = parse(&records).unwrap();
        assert_eq!(db.skipped().len(), 4);
        messages.extend(db.skipped().iter().map(ToString::to_string));
        let present = [near_cap.to_vec(), b".x".to_vec(), near_cap.to_vec()];
        let db = parse(&[&b"1 7 9\n1 "[..], near_cap, b"\n1 "].concat()).unwrap();
        messages.extend(to_uidlist(Some(&db), &present, None, 1).warnings);
        for s in messages {
            assert!(s.len() < 1024, "{}", s.len());
            assert!(!s.chars().any(char::is_control), "{s}");
        }
    }

    fn arb_uiddb() -> impl Strategy<Value = Vec<u8>> {
        let uid = prop_oneof![
            6 => 1u64..40,
            1 => Just(0u64),
            1 => Just(u64::from(u32::MAX)),
            1 => (u64::from(u32::MAX) - 3)..(u64::from(u32::MAX) + 3),
        ];
        let line = prop_oneof![
            8 => (uid, "[a-h]").prop_map(|(u, b)| format!("{u} {b}").into_bytes()),
            1 => proptest::collection::vec(any::<u8>(), 0..12),
        ];
        (
            1u32..2000,
            prop_oneof![0u64..60, Just(u64::from(u32::MAX) - 2), Just(u64::MAX)],
            proptest::collection::vec(line, 0..16),
        )
            .prop_map(|(v, n, lines)| {
                let mut out = format!("1 {v} {n}\n").into_bytes();
                for l in lines {
                    out.extend_from_slice(&l);
                    out.push(b'\n');
                }
                out
            })
    }

    fn arb_present() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(
            prop_oneof![
                8 => "[a-k]".prop_map(String::into_bytes),
                1 => proptest::collection::vec(any::<u8>(), 0..4),
            ],
            0..14,
        )
    }

    proptest! {
        #[test]
        fn output_is_a_uidlist_dovecot_keeps(
            db in arb_uiddb(),
            present in arb_present(),
            pop in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80)),
            now in any::<u32>(),
        ) {
            let db = parse(&db).ok();
            let pop = pop.and_then(|p| pop3::parse(&p).ok());
            let c = to_uidlist(db.as_ref(), &present, pop.as_ref(), now);
            let bytes = c.uidlist.to_bytes();
            prop_assert_eq!(Uidlist::parse(&bytes).unwrap(), c.uidlist.clone());

            // Every listable present message exactly once.
            let mut want: Vec<&[u8]> = present.iter().map(|b| &b[..]).filter(|b| listable(b)).collect();
            want.sort();
            want.dedup();
            let mut got: Vec<&[u8]> = c.uidlist.records.iter().map(|r| &r.name[..]).collect();
            got.sort();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(c.kept + c.renumbered.len(), got.len());

            // Strictly increasing, in range, and the next UID above them.
            let uids: Vec<u32> = c.uidlist.records.iter().map(|r| r.uid).collect();
            prop_assert!(uids.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(uids.iter().all(|&u| u != 0 && u < u32::MAX));
            prop_assert!(c.uidlist.next_uid() < u32::MAX);

            // Kept UIDs are the ones Courier had for that message.
            let new: HashMap<&[u8], u32> = c.renumbered.iter().map(|(b, u)| (&b[..], *u)).collect();
            for r in &c.uidlist.records {
                match new.get(&r.name[..]) {
                    Some(&u) => prop_assert_eq!(u, r.uid),
                    None => {
                        let db = db.as_ref().unwrap();
                        prop_assert_eq!(c.uid_validity, db.uid_validity());
                        prop_assert!(db.records().iter().any(|d| d.base == r.name && d.uid == u64::from(r.uid)));
                    }
                }
            }
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&data);
        }
    }

    fn uiddb_like() -> impl Strategy<Value = Vec<u8>> {
        let piece: Vec<&[u8]> = vec![
            &b"1 "[..],
            b"1",
            b"2",
            b" ",
            b"0",
            b"4294967295",
            b"99999999999999999999999",
            b"\n",
            b"\r\n",
            b"a",
            b":2,S",
            b"/",
            b":",
            "é".as_bytes(),
            b"\xff",
            b"\0",
        ];
        crate::hostile::fragments(piece, 30)
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_converts(
            data in crate::hostile::or_any_bytes(uiddb_like(), 400),
            present in arb_present(),
        ) {
            if let Ok(db) = parse(&data) {
                let c = to_uidlist(Some(&db), &present, None, 1);
                prop_assert!(Uidlist::parse(&c.uidlist.to_bytes()).is_ok());
                for w in db.skipped().iter().map(ToString::to_string).chain(c.warnings) {
                    prop_assert!(!w.chars().any(char::is_control), "{w}");
                }
            }
        }
    }
}
