//! Guest pages straight between RAM and the connection, with no bounce
//! buffer: the source scans pages for zeros in place and sends a frame's
//! headers and its pages with one `sendmsg` whose second iovec is guest
//! RAM; the destination reads a frame's pages into guest RAM with `read`.
//! Each page crosses the CPU once per side (the kernel's socket copy),
//! which is what keeps a migration near the socket's own speed.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// True when every byte of `page` is zero. The guest may be writing the
/// page as it is scanned, so it is read with volatile loads; a page that
/// changes afterwards is in the dirty log and goes again next pass.
pub fn is_zero_in_place<B: BitmapSlice>(page: &VolatileSlice<'_, B>) -> bool {
    let guard = page.ptr_guard();
    let words = page.len() / 8;
    let base = guard.as_ptr().cast::<u64>();
    let mut i = 0;
    while i < words {
        // Eight words per step, OR-folded: one branch per cache line.
        let step = (words - i).min(8);
        let mut acc = 0u64;
        for k in 0..step {
            // SAFETY: `i + k < words`, so the word lies inside the slice,
            // whose memory stays mapped while `guard` lives. Guest RAM is
            // page-aligned, so the word is aligned. A volatile load of
            // memory another thread may write is what guest memory
            // accesses are.
            acc |= unsafe { std::ptr::read_volatile(base.add(i + k)) };
        }
        if acc != 0 {
            return false;
        }
        i += step;
    }
    // A tail shorter than a word (never for whole pages).
    let mut tail = [0u8; 8];
    page.offset(words * 8)
        .map(|t| t.copy_to(&mut tail[..]))
        .is_ok_and(|_| tail == [0; 8])
}

/// Send `head` and then the bytes of `body` (guest RAM) on the socket
/// `fd`, all of them: `sendmsg` with two iovecs, continued after partial
/// sends. `MSG_NOSIGNAL`: a peer that went away is an `EPIPE` error, not
/// a signal that kills the embedding program.
pub fn send_all<B: BitmapSlice>(
    fd: BorrowedFd<'_>,
    head: &[u8],
    body: &VolatileSlice<'_, B>,
) -> io::Result<()> {
    let guard = body.ptr_guard();
    let total = head.len() + body.len();
    let mut sent = 0usize;
    while sent < total {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let mut n = 0;
        if sent < head.len() {
            iov[n] = libc::iovec {
                // SAFETY: `sent < head.len()`; the kernel only reads it.
                iov_base: unsafe { head.as_ptr().add(sent) } as *mut libc::c_void,
                iov_len: head.len() - sent,
            };
            n += 1;
        }
        let in_body = sent.saturating_sub(head.len());
        if in_body < body.len() {
            iov[n] = libc::iovec {
                // SAFETY: `in_body < body.len()`, inside the guest memory
                // `guard` keeps mapped; the kernel only reads it.
                iov_base: unsafe { guard.as_ptr().add(in_body) } as *mut libc::c_void,
                iov_len: body.len() - in_body,
            };
            n += 1;
        }
        // SAFETY: msghdr is plain data; all-zero is valid (no name, no
        // control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n;
        // SAFETY: `msg` points at `n` iovecs over live memory (above); the
        // descriptor is borrowed for the call.
        let rc = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += rc as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use virtkit_core::runtime::memory;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn a_single_non_zero_byte_anywhere_makes_a_page_non_zero() {
        let mem = memory::create(1 << 20).unwrap();
        let page = |at: u64| mem.get_slice(GuestAddress(at), 4096).unwrap();
        assert!(is_zero_in_place(&page(0)));
        for offset in [0u64, 7, 8, 63, 64, 2048, 4088, 4095] {
            let at = 0x10000;
            mem.write_slice(&[0x80], GuestAddress(at + offset)).unwrap();
            assert!(!is_zero_in_place(&page(at)), "byte {offset}");
            mem.write_slice(&[0], GuestAddress(at + offset)).unwrap();
            assert!(is_zero_in_place(&page(at)), "byte {offset} cleared");
        }
        // Slices that are not whole words check their tail too.
        mem.write_slice(&[1], GuestAddress(0x20000 + 12)).unwrap();
        let odd = mem.get_slice(GuestAddress(0x20000), 13).unwrap();
        assert!(!is_zero_in_place(&odd));
        let short = mem.get_slice(GuestAddress(0x20000), 12).unwrap();
        assert!(is_zero_in_place(&short));
    }

    #[test]
    fn send_all_delivers_head_and_guest_bytes_across_partial_sends() {
        let mem = memory::create(4 << 20).unwrap();
        let body: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 253) as u8).collect();
        mem.write_slice(&body, GuestAddress(0x1000)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        // A small send buffer: the kernel takes the frame in many pieces.
        let small: libc::c_int = 8192;
        // SAFETY: setsockopt on our own socket with a c_int of its size.
        let rc = unsafe {
            libc::setsockopt(
                a.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        let slice = mem.get_slice(GuestAddress(0x1000), body.len()).unwrap();
        send_all(a.as_fd(), b"header--", &slice).unwrap();
        drop(a);
        let got = reader.join().unwrap();
        assert_eq!(&got[..8], b"header--");
        assert!(got[8..] == body[..], "the guest bytes arrive in order");
    }

    #[test]
    fn send_all_to_a_closed_peer_is_an_error_not_a_signal() {
        let mem = memory::create(1 << 20).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let slice = mem.get_slice(GuestAddress(0), 4096).unwrap();
        // Rust programs ignore SIGPIPE, but a program embedding the SDK
        // may not: try it in a child with the default action restored.
        // SAFETY: the child only restores a signal action, makes the
        // call under test (no allocation on its error path) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: see above; nothing here returns to the test harness.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let code = match send_all(a.as_fd(), b"h", &slice) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
                    _ => 1,
                };
                libc::_exit(code);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child died of a signal or saw no EPIPE: status {status:#x}"
        );
    }
}
