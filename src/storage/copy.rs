//! Copying a disk (its whole backing chain, as the guest sees it) into a new image file,
//! skipping holes and all-zero clusters so the result stays sparse.

use std::fs::File;
use std::path::Path;

use super::image::{is_zero, Chain, ChainError, Format};
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
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Copy `src` into `out` (an empty file) as `format`; `progress(done, total)` is called
/// after every chunk. Returns the virtual size.
pub fn copy_image(
    src: &Path,
    out: &File,
    out_path: &Path,
    format: Format,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, CopyError> {
    let mut chain = Chain::open(src)?;
    let size = chain.size;
    let werr = |source| CopyError::Write { path: out_path.display().to_string(), source };
    let mut writer = match format {
        Format::Qcow2 => Some(Qcow2Writer::new(out, size, None)?),
        Format::Raw => None,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(CHUNK as u64) as usize;
        let chunk = &mut buf[..len];
        if chain.read(off, chunk)? {
            // Runs of non-zero clusters, each written with one call.
            let mut i = 0;
            while i < len {
                let start = i;
                while i < len && !is_zero(&chunk[i..(i + OUT_CLUSTER).min(len)]) {
                    i += OUT_CLUSTER;
                }
                let end = i.min(len);
                if end > start {
                    let g = off + start as u64;
                    match writer.as_mut() {
                        Some(w) => w.write_clusters(g / OUT_CLUSTER as u64, &chunk[start..end]).map_err(werr)?,
                        None => std::os::unix::fs::FileExt::write_all_at(out, &chunk[start..end], g).map_err(werr)?,
                    }
                }
                i += OUT_CLUSTER;
            }
        }
        off += len as u64;
        progress(off, size);
    }
    match writer {
        Some(w) => {
            w.finish().map_err(werr)?;
        }
        None => out.set_len(size).map_err(werr)?,
    }
    Ok(size)
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
