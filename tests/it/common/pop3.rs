//! A minimal POP3 client for tests: log in and list UIDLs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `UIDL` of the mailbox after USER/PASS, as (message number, uidl).
pub fn uidl(port: u16, user: &str, password: &str) -> Result<Vec<(u32, String)>, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut read_line = |r: &mut BufReader<TcpStream>| -> Result<String, String> {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line.trim_end().to_string())
    };
    let mut expect_ok = |r: &mut BufReader<TcpStream>, what: &str| -> Result<(), String> {
        let l = read_line(r)?;
        if l.starts_with("+OK") {
            Ok(())
        } else {
            Err(format!("{what}: {l}"))
        }
    };
    expect_ok(&mut r, "greeting")?;
    for (cmd, what) in [
        (format!("USER {user}\r\n"), "USER"),
        (format!("PASS {password}\r\n"), "PASS"),
        ("UIDL\r\n".to_string(), "UIDL"),
    ] {
        w.write_all(cmd.as_bytes()).map_err(|e| e.to_string())?;
        expect_ok(&mut r, what)?;
    }
    let mut out = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).map_err(|e| e.to_string())?;
        let l = l.trim_end();
        if l == "." {
            break;
        }
        let (n, id) = l.split_once(' ').ok_or(format!("bad UIDL line {l:?}"))?;
        out.push((
            n.parse().map_err(|_| format!("bad UIDL line {l:?}"))?,
            id.to_string(),
        ));
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(out)
}
