//! A TFTP client for the boot file (RFC 1350, with the RFC 2347/2348/2349
//! `blksize` and `tsize` options): read request, OACK or first block,
//! one ACK per block, retransmission on silence, a size limit.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::link::{FrameLink, Ipv4Link};
use super::NetbootError;

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Blocks this client asks for: an Ethernet frame's worth with room for
/// the headers (what iPXE and PXE ROMs ask too).
pub const BLKSIZE: u16 = 1432;
/// The local port transfers use.
const CLIENT_PORT: u16 = 2070;

fn rrq(file: &str) -> Vec<u8> {
    let mut p = RRQ.to_be_bytes().to_vec();
    for field in [file, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let mut p = ACK.to_be_bytes().to_vec();
    p.extend_from_slice(&block.to_be_bytes());
    p
}

fn error(code: u16, text: &str) -> Vec<u8> {
    let mut p = ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(text.as_bytes());
    p.push(0);
    p
}

/// Abort the transfer with TFTP error 3 (allocation exceeded) sent to
/// `to` (MAC, address, port), and say why.
fn too_large<L: FrameLink>(
    link: &mut Ipv4Link<L>,
    to: ([u8; 6], Ipv4Addr, u16),
    file: &str,
    max: usize,
) -> NetbootError {
    // Best effort: the server times out on its own if this is lost.
    let _ = link.send_udp(to.0, to.1, CLIENT_PORT, to.2, &error(3, "file too large"));
    NetbootError::TooLarge {
        file: file.into(),
        max,
    }
}

/// Options an OACK carries, as name/value pairs.
fn oack_options(body: &[u8]) -> Vec<(String, String)> {
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).to_ascii_lowercase())
        .collect();
    fields
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Fetch `file` from `server` (reached through `next_hop_mac`), giving up
/// after `retries` silent waits of `timeout` each, or when the file
/// exceeds `max_len`.
pub fn fetch<L: FrameLink>(
    link: &mut Ipv4Link<L>,
    server: Ipv4Addr,
    next_hop_mac: [u8; 6],
    file: &str,
    timeout: Duration,
    retries: u32,
    max_len: usize,
) -> Result<Vec<u8>, NetbootError> {
    let mut out = Vec::new();
    let mut last = rrq(file);
    let mut server_port = SERVER_PORT;
    let mut locked = false;
    let mut blksize = 512usize;
    let mut expected: u16 = 1;
    let mut silent = 0;
    link.send_udp(next_hop_mac, server, CLIENT_PORT, server_port, &last)?;
    loop {
        let Some(d) = link.recv_udp(CLIENT_PORT, Instant::now() + timeout)? else {
            silent += 1;
            if silent > retries {
                return Err(NetbootError::TftpTimeout {
                    file: file.into(),
                    received: out.len(),
                });
            }
            link.send_udp(next_hop_mac, server, CLIENT_PORT, server_port, &last)?;
            continue;
        };
        if d.from != server || (locked && d.from_port != server_port) || d.payload.len() < 4 {
            continue;
        }
        silent = 0;
        if !locked {
            // The server answers from its transfer ID (a new port).
            server_port = d.from_port;
            locked = true;
        }
        let opcode = u16::from_be_bytes([d.payload[0], d.payload[1]]);
        let arg = u16::from_be_bytes([d.payload[2], d.payload[3]]);
        match opcode {
            OACK if expected == 1 && out.is_empty() => {
                for (name, value) in oack_options(&d.payload[2..]) {
                    match (name.as_str(), value.parse::<usize>()) {
                        ("blksize", Ok(b)) if (8..=usize::from(BLKSIZE)).contains(&b) => {
                            blksize = b
                        }
                        ("tsize", Ok(t)) if t > max_len => {
                            let to = (next_hop_mac, server, server_port);
                            return Err(too_large(link, to, file, max_len));
                        }
                        _ => {}
                    }
                }
                last = ack(0);
                link.send_udp(next_hop_mac, server, CLIENT_PORT, server_port, &last)?;
            }
            DATA if arg == expected => {
                let data = &d.payload[4..];
                if out.len() + data.len() > max_len {
                    let to = (next_hop_mac, server, server_port);
                    return Err(too_large(link, to, file, max_len));
                }
                out.extend_from_slice(data);
                last = ack(arg);
                link.send_udp(next_hop_mac, server, CLIENT_PORT, server_port, &last)?;
                if data.len() < blksize {
                    return Ok(out);
                }
                expected = expected.wrapping_add(1);
            }
            // A duplicate: our ACK was lost; send it again.
            DATA if arg == expected.wrapping_sub(1) => {
                link.send_udp(next_hop_mac, server, CLIENT_PORT, server_port, &last)?;
            }
            ERROR => {
                let message = String::from_utf8_lossy(&d.payload[4..])
                    .trim_end_matches('\0')
                    .to_string();
                return Err(NetbootError::TftpError {
                    file: file.into(),
                    code: arg,
                    message,
                });
            }
            _ => {}
        }
    }
}

/// The well-known TFTP port.
pub const SERVER_PORT: u16 = 69;
