//! A plain HTTP/1.1 server on loopback for the HTTP agents' tests: a canned answer per method
//! and path, one request per connection, and word of each client that hung up before the end
//! of an answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// One answer.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// `Content-Length` to announce when more than `body`: the server sends `body`, then
    /// nothing more, and waits for the client to hang up.
    pub(crate) announced: Option<usize>,
}

/// A running server; stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// One message per client that hung up in the middle of an answer.
    pub(crate) hung_up: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `answer(method, path)` on 127.0.0.1.
pub(crate) async fn serve(answer: impl Fn(&str, &str) -> Answer + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, hung_up) = mpsc::unbounded_channel();
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if answer_one(stream, &*answer).await {
                    let _ = tx.send(());
                }
            });
        }
    });
    Server {
        addr,
        hung_up,
        task,
    }
}

/// Read one request and answer it; true when the client hung up before the announced end.
async fn answer_one(mut stream: TcpStream, answer: &(dyn Fn(&str, &str) -> Answer + Sync)) -> bool {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_string();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let mut first = head.split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let a = answer(method, path);
    let announced = a.announced.unwrap_or(a.body.len()).max(a.body.len());
    let mut out = format!(
        "HTTP/1.1 {} Answer\r\nContent-Type: application/json\r\nContent-Length: {announced}\r\n\
         Connection: close\r\n\r\n",
        a.status
    )
    .into_bytes();
    out.extend_from_slice(&a.body);
    if stream.write_all(&out).await.is_err() {
        return true;
    }
    if announced == a.body.len() {
        let _ = stream.shutdown().await;
        return false;
    }
    // The rest never comes: wait for the client to give up.
    let gone = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .is_ok()
}
