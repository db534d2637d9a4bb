//! Copying a disk (its whole backing chain, as the guest sees it) into a new image file,
//! skipping holes and all-zero clusters so the result stays sparse.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::codec::Deflater;
use super::image::{is_zero, Chain, ChainError, Format, Source};
use super::qcow2::{Qcow2Error, Qcow2Writer};

/// Bytes read per step; a multiple of the output cluster size.
const CHUNK: usize = 4 << 20;
const OUT_CLUSTER: usize = 1 << super::qcow2::DEFAULT_CLUSTER_BITS;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Source(#[from] ChainError),
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
    #[error(
        "{path}: carries persistent dirty bitmaps {names} that a copy would lose (a linked clone keeps \
         them on its base; or drop them first: qemu-img bitmap --remove {path} NAME)"
    )]
    Bitmaps { path: String, names: String },
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("--compress needs qcow2 output (the copy would be {format})")]
    CompressNeedsQcow2 { format: Format },
}

/// Copy `src` (read with its recorded format) into `out` (an empty file) as `format`;
/// `progress(done, total)` is called after every chunk. Returns the virtual size.
///
/// A reader thread walks the source chain while this thread writes, so reading, zero
/// detection and writing overlap. With `durable`, writeback to disk is started as the copy
/// goes, so that the caller's final fsync has little left to wait for. With `compress`
/// (qcow2 only), each cluster that shrinks is written compressed, as `qemu-img convert -c`
/// writes it.
#[allow(clippy::too_many_arguments)]
pub fn copy_image(
    src: Source,
    out: &File,
    out_path: &Path,
    format: Format,
    compress: bool,
    durable: bool,
    fault: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CopyError> {
    if compress && format != Format::Qcow2 {
        return Err(CopyError::CompressNeedsQcow2 { format });
    }
    let mut chain = Chain::open(src)?;
    if let Some((path, names)) = chain.bitmaps().first() {
        let names = names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
        return Err(CopyError::Bitmaps { path: path.display().to_string(), names });
    }
    let size = chain.size;
    let werr = |source| CopyError::Write { path: out_path.display().to_string(), source };
    let mut writer = match format {
        Format::Qcow2 => Some(Qcow2Writer::new(out, size, None)?),
        Format::Raw => None,
    };
    let mut packer = compress.then(Packer::default);
    pipelined(
        size,
        |off, buf| chain.read(off, buf).map_err(CopyError::from),
        |off, buf, any| {
            match (any, &mut packer, writer.as_mut()) {
                (false, _, _) => {}
                (true, Some(p), Some(w)) => p.write_chunk(buf, off, w).map_err(werr)?,
                (true, _, w) => write_nonzero(buf, off, w, out).map_err(werr)?,
            }
            if durable {
                start_writeback(out);
            }
            progress(off + buf.len() as u64, size);
            crate::fault::point(fault);
            Ok(())
        },
    )?;
    match writer {
        Some(w) => {
            w.finish().map_err(werr)?;
        }
        None => out.set_len(size).map_err(werr)?,
    }
    if size == 0 {
        progress(0, 0);
    }
    Ok(size)
}

/// Run `read` (fills a buffer for an offset, says whether any byte is non-zero) on a
/// thread of its own and `write` on this one, `CHUNK` bytes at a time over `size` bytes,
/// with three buffers going round. The first error of either side ends both.
fn pipelined<E: Send>(
    size: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<bool, E> + Send,
    mut write: impl FnMut(u64, &[u8], bool) -> Result<(), E>,
) -> Result<(), E> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(u64, Vec<u8>, bool), E>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        empty_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
    }
    std::thread::scope(|scope| {
        // Owned in here so that an early return (a write error) drops both ends the reader
        // may be blocked on; otherwise the scope would wait forever to join it.
        let empty_tx = empty_tx;
        scope.spawn(move || {
            let mut off = 0u64;
            while off < size {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let len = (size - off).min(CHUNK as u64) as usize;
                buf.truncate(len);
                let msg = read(off, &mut buf).map(|any| (off, buf, any));
                let failed = msg.is_err();
                if full_tx.send(msg).is_err() || failed {
                    return;
                }
                off += len as u64;
            }
        });
        for msg in full_rx {
            let (off, mut buf, any) = msg?;
            write(off, &buf, any)?;
            buf.resize(CHUNK, 0);
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })
}

/// Largest single write. Measured on ext4 (kernel 6.18): 4 MiB writes into the page cache
/// now and then take 2-5x longer (a third of the copy's runs were slow), 1 MiB ones do not.
const MAX_WRITE: usize = 1 << 20;

/// Write the non-zero clusters of `chunk` (guest offset `off`), each run of up to
/// `MAX_WRITE` bytes with one call.
fn write_nonzero(chunk: &[u8], off: u64, mut writer: Option<&mut Qcow2Writer>, out: &File) -> std::io::Result<()> {
    let len = chunk.len();
    let mut i = 0;
    while i < len {
        let start = i;
        while i < len && i - start < MAX_WRITE && !is_zero(&chunk[i..(i + OUT_CLUSTER).min(len)]) {
            i += OUT_CLUSTER;
        }
        let end = i.min(len);
        if end > start {
            let g = off + start as u64;
            match writer.as_deref_mut() {
                Some(w) => w.write_clusters(g / OUT_CLUSTER as u64, &chunk[start..end])?,
                None => std::os::unix::fs::FileExt::write_all_at(out, &chunk[start..end], g)?,
            }
        } else {
            i += OUT_CLUSTER; // an all-zero cluster: left as a hole
        }
    }
    Ok(())
}

/// Compressed output: the non-zero clusters of each chunk deflated on two threads (each
/// taking the next cluster as it is free), then written in guest order, packed compressed
/// where they shrank and as they are elsewhere. Memory: one chunk's worth of streams.
#[derive(Default)]
struct Packer {
    deflaters: [Deflater; 2],
    /// One buffer per non-zero cluster of the chunk: its stream, or empty if it did not shrink.
    streams: Vec<Mutex<Vec<u8>>>,
}

impl Packer {
    fn write_chunk(&mut self, chunk: &[u8], off: u64, w: &mut Qcow2Writer) -> std::io::Result<()> {
        let cs = OUT_CLUSTER;
        let nonzero: Vec<usize> = (0..chunk.len().div_ceil(cs))
            .filter(|&i| !is_zero(&chunk[i * cs..((i + 1) * cs).min(chunk.len())]))
            .collect();
        if self.streams.len() < nonzero.len() {
            self.streams.resize_with(nonzero.len(), Default::default);
        }
        let (streams, next) = (&self.streams[..], AtomicUsize::new(0));
        let work = |d: &mut Deflater| -> std::io::Result<()> {
            let mut padded = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = nonzero.get(k) else { return Ok(()) };
                let mut out = streams[k].lock().expect("stream lock");
                deflate_cluster(&chunk[i * cs..((i + 1) * cs).min(chunk.len())], &mut out, d, &mut padded)?;
            }
        };
        let [da, db] = &mut self.deflaters;
        let (ra, rb) = std::thread::scope(|s| {
            let other = (nonzero.len() > 1).then(|| s.spawn(|| work(db)));
            let mine = work(da);
            (mine, other.map_or(Ok(()), |t| t.join().expect("deflating thread panicked")))
        });
        ra?;
        rb?;
        // Write in guest order; runs of clusters that did not shrink in one call each.
        let streams: Vec<&Vec<u8>> = self.streams.iter_mut().map(|m| &*m.get_mut().expect("stream lock")).collect();
        let first = off / cs as u64;
        let mut k = 0;
        while k < nonzero.len() {
            let i = nonzero[k];
            if !streams[k].is_empty() {
                w.write_compressed(first + i as u64, streams[k])?;
                k += 1;
                continue;
            }
            let mut end = k + 1;
            while end < nonzero.len()
                && nonzero[end] == i + (end - k)
                && streams[end].is_empty()
                && (end - k) * cs < MAX_WRITE
            {
                end += 1;
            }
            let bytes = &chunk[i * cs..((i + end - k) * cs).min(chunk.len())];
            w.write_clusters(first + i as u64, bytes)?;
            k = end;
        }
        Ok(())
    }
}

/// Deflate one cluster into `out` (left empty if it does not shrink). The image's last
/// cluster may be short: it is deflated padded with zeros, as the guest reads it.
fn deflate_cluster(data: &[u8], out: &mut Vec<u8>, d: &mut Deflater, padded: &mut Vec<u8>) -> std::io::Result<()> {
    let mut data = data;
    if data.len() < OUT_CLUSTER {
        padded.clear();
        padded.extend_from_slice(data);
        padded.resize(OUT_CLUSTER, 0);
        data = padded;
    }
    d.deflate(data, out)?;
    Ok(())
}

/// Ask the kernel to start writing back what is dirty so far, without waiting: the final
/// fsync then has little left to do, and disk I/O overlaps the copy.
fn start_writeback(out: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on a valid fd only schedules I/O; offset 0, len 0 = whole file.
    unsafe { libc::sync_file_range(out.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Copy a file's bytes as they are (no format interpretation), keeping holes and skipping
/// all-zero blocks. Returns the length copied.
pub fn copy_bytes(
    src: &File,
    out: &File,
    out_path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CopyError> {
    use std::os::unix::fs::FileExt;
    let werr = |source| CopyError::Write { path: out_path.display().to_string(), source };
    let len = src.metadata().map_err(werr)?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(CHUNK as u64) as usize;
        src.read_exact_at(&mut buf[..n], off).map_err(werr)?;
        for (i, block) in buf[..n].chunks(OUT_CLUSTER).enumerate() {
            if !is_zero(block) {
                out.write_all_at(block, off + (i * OUT_CLUSTER) as u64).map_err(werr)?;
            }
        }
        off += n as u64;
        progress(off, len);
    }
    out.set_len(len).map_err(werr)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Run `pipelined` on a thread, failing the test if it has not returned within a minute.
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()).unwrap());
        rx.recv_timeout(Duration::from_secs(60)).expect("the copy pipeline hung")
    }

    /// A slow failing write (a filling tmpfs) while the reader has run ahead and waits for a
    /// free buffer: the error comes back instead of the pipeline hanging, which it used to.
    #[test]
    fn a_slow_write_error_with_the_reader_ahead_returns_instead_of_hanging() {
        let reads = std::sync::Arc::new(AtomicU64::new(0));
        let r = reads.clone();
        let result = within_a_minute(move || {
            pipelined(
                64 * CHUNK as u64,
                |_, _| {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(true)
                },
                |off, _, _| {
                    std::thread::sleep(Duration::from_millis(200));
                    Err(format!("no space at {off}"))
                },
            )
        });
        assert_eq!(result, Err("no space at 0".to_string()));
        // Three buffers: the reader got exactly three chunks ahead, then stopped.
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_read_error_ends_the_copy_after_the_chunks_before_it() {
        let result = within_a_minute(|| {
            let mut written = vec![];
            let r = pipelined(
                10 * CHUNK as u64 + 5,
                |off, buf| {
                    buf.fill(1);
                    if off == 4 * CHUNK as u64 {
                        Err("bad sector".to_string())
                    } else {
                        Ok(true)
                    }
                },
                |off, buf, _| {
                    written.push((off, buf.len()));
                    Ok(())
                },
            );
            (r, written)
        });
        assert_eq!(result.0, Err("bad sector".to_string()));
        assert_eq!(result.1, (0..4).map(|i| (i * CHUNK as u64, CHUNK)).collect::<Vec<_>>());
    }

    /// Runs longer than `MAX_WRITE` are split without dropping a cluster; zero clusters
    /// stay holes; a short tail is written.
    #[test]
    fn nonzero_runs_are_written_whole_in_bounded_pieces_and_zeros_stay_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.raw");
        let out = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut chunk = vec![0u8; CHUNK];
        let zero_at = MAX_WRITE + 3 * OUT_CLUSTER;
        for (i, b) in chunk.iter_mut().enumerate() {
            let in_zero = (zero_at..zero_at + OUT_CLUSTER).contains(&i);
            *b = if in_zero { 0 } else { (i / OUT_CLUSTER) as u8 | 1 };
        }
        let tail = &chunk[..CHUNK - 100];
        write_nonzero(tail, 0, None, &out).unwrap();
        out.set_len(CHUNK as u64).unwrap();
        let mut back = vec![0u8; CHUNK];
        out.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..CHUNK - 100] == chunk[..CHUNK - 100], "data differs");
        assert!(is_zero(&back[CHUNK - 100..]));
        // The zero cluster was not written: a hole in the file.
        let hole = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&out), zero_at as i64, libc::SEEK_HOLE) };
        assert_eq!(hole as usize, zero_at);
    }

    #[test]
    fn every_chunk_arrives_once_in_order_with_a_short_tail() {
        let written = within_a_minute(|| {
            let mut written = vec![];
            pipelined::<()>(
                3 * CHUNK as u64 + 7,
                |off, buf| {
                    buf.fill((off / CHUNK as u64) as u8);
                    Ok(off != CHUNK as u64)
                },
                |off, buf, any| {
                    assert!(buf.iter().all(|&b| b as u64 == off / CHUNK as u64));
                    written.push((off, buf.len(), any));
                    Ok(())
                },
            )
            .unwrap();
            written
        });
        let c = CHUNK as u64;
        assert_eq!(written, vec![(0, CHUNK, true), (c, CHUNK, false), (2 * c, CHUNK, true), (3 * c, 7, true)]);
    }
}
