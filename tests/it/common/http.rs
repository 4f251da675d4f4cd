//! A local HTTP server for the download tests: 127.0.0.1 on an ephemeral port, one file at one
//! path, HTTP/1.1 with `Connection: close`; it can cut its first answer short, honour or ignore
//! Range, or answer 404, and it records the Range header of every request.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Behaviour {
    /// 200, or 206 for a Range request.
    Good,
    /// Announces the whole length but sends only the first third, then hangs up; once. Then as
    /// `Good`.
    CutOnceThenGood,
    /// Cut once, then ignores Range and sends everything with 200.
    CutOnceThenNoRange,
    /// 404 to every request.
    NotFound,
}

pub struct Server {
    /// `http://127.0.0.1:PORT/PATH`
    pub url: String,
    /// The Range header of every request, "" when none.
    ranges: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// The Range header of every request so far, in order, "" when none.
    pub fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }

    /// How many requests have been read so far.
    pub fn requests(&self) -> usize {
        self.ranges.lock().unwrap().len()
    }
}

/// Serves `body` at `path` (starting with `/`) until `requests` have been answered or 60 s pass.
pub fn serve(path: &str, body: Vec<u8>, behaviour: Behaviour, requests: usize) -> Server {
    assert!(path.starts_with('/'), "{path}");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ranges);
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answered = 0;
        while answered < requests && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    let first = answered == 0;
                    answered += 1;
                    let _ = answer(stream, &body, behaviour, first, &seen);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Server { url, ranges }
}

fn answer(
    mut stream: TcpStream,
    body: &[u8],
    behaviour: Behaviour,
    first: bool,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = v.trim().to_string();
        }
    }
    seen.lock().unwrap().push(range.clone());
    let start: usize =
        range.strip_prefix("bytes=").and_then(|r| r.trim_end_matches('-').parse().ok()).unwrap_or(0);
    let honour_range = match behaviour {
        Behaviour::NotFound => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            )?;
            return Ok(());
        }
        Behaviour::CutOnceThenNoRange => false,
        _ => true,
    };
    if first && behaviour != Behaviour::Good {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body[..body.len() / 3])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    if honour_range && start > 0 && start < body.len() {
        let rest = &body[start..];
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
            rest.len(),
            start,
            body.len() - 1,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(rest)?;
    } else {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
    }
    stream.flush()?;
    // Drain so the client sees a clean close rather than a reset.
    let _ = reader.read(&mut [0u8; 16]);
    Ok(())
}
