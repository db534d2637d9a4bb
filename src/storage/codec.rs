//! Compressed qcow2 clusters: inflating (zlib's raw deflate, zstd) and deflating, with the
//! decoder and encoder state kept from one cluster to the next instead of allocated anew for
//! each.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use super::qcow2::COMPRESSION_ZSTD;

/// qemu's window for compressed clusters: raw deflate, window bits -12 (4 KiB).
const ZLIB_WINDOW_BITS: u8 = 12;
/// The largest zstd window a frame may ask for: a hostile frame cannot make the decoder
/// allocate more than a few MiB.
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Decoder state for compressed clusters of either type, reset (not reallocated) per cluster.
pub struct Inflater {
    zlib: Decompress,
    zstd: FrameDecoder,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        let mut zstd = FrameDecoder::new();
        zstd.set_max_window_size(ZSTD_MAX_WINDOW);
        Inflater { zlib: Decompress::new(false), zstd }
    }

    /// Inflate `raw` (a stream of compression type `ty`, possibly followed by garbage up to
    /// its last sector's end) into `out`, which it must fill exactly: a stream that stops
    /// short of `out.len()` bytes or goes on past them is refused. What would inflate past
    /// the cluster is never produced beyond one byte, so a bomb costs nothing.
    pub fn inflate(&mut self, ty: u8, raw: &[u8], out: &mut [u8]) -> Result<(), String> {
        match ty {
            COMPRESSION_ZSTD => self.unzstd(raw, out),
            _ => self.unzlib(raw, out),
        }
    }

    fn unzlib(&mut self, raw: &[u8], out: &mut [u8]) -> Result<(), String> {
        let cs = out.len();
        let d = &mut self.zlib;
        d.reset(false);
        // Flush `None`: with `Finish`, a stream that does not fit leaves the decoder failed,
        // and the check below could not tell "ends here" from "goes on".
        let status = d.decompress(raw, out, FlushDecompress::None).map_err(|e| format!("does not inflate ({e})"))?;
        let got = d.total_out() as usize;
        if got != cs {
            return Err(format!("inflates to {got} bytes, not the cluster's {cs}"));
        }
        if status != Status::StreamEnd {
            // The cluster is full: one byte more would mean the stream goes on past it.
            let mut more = [0u8; 1];
            let rest = &raw[d.total_in() as usize..];
            if d.decompress(rest, &mut more, FlushDecompress::None).is_ok() && d.total_out() as usize > cs {
                return Err(format!("inflates past the cluster's {cs} bytes"));
            }
        }
        Ok(())
    }

    fn unzstd(&mut self, raw: &[u8], out: &mut [u8]) -> Result<(), String> {
        use std::io::Read;
        let cs = out.len();
        let mut src = raw;
        let mut d = StreamingDecoder::new_with_decoder(&mut src, &mut self.zstd)
            .map_err(|e| format!("is not a zstd frame ({e})"))?;
        let mut got = 0;
        while got < cs {
            match d.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return Err(format!("does not decompress ({e})")),
            }
        }
        if got < cs {
            return Err(format!("decompresses to {got} bytes, not the cluster's {cs}"));
        }
        let mut more = [0u8; 1];
        match d.read(&mut more) {
            Ok(0) => Ok(()),
            Ok(_) => Err(format!("decompresses past the cluster's {cs} bytes")),
            Err(e) => Err(format!("does not decompress ({e})")),
        }
    }
}

/// Encoder state for writing compressed clusters as qemu does (raw deflate, 4 KiB window,
/// zlib's default level), reset per cluster.
pub struct Deflater {
    zlib: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new()
    }
}

impl Deflater {
    pub fn new() -> Deflater {
        Deflater { zlib: Compress::new_with_window_bits(Compression::default(), false, ZLIB_WINDOW_BITS) }
    }

    /// Deflate `data` into `out` if the stream comes out smaller than `data` (qemu's rule: a
    /// cluster that does not shrink is written as it is). Returns whether it did; `out`
    /// holds exactly the stream then.
    pub fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<bool> {
        out.clear();
        if data.len() < 2 {
            return Ok(false);
        }
        out.resize(data.len() - 1, 0);
        self.zlib.reset();
        let status = self.zlib.compress(data, out, FlushCompress::Finish).map_err(std::io::Error::other)?;
        if status != Status::StreamEnd {
            out.clear();
            return Ok(false);
        }
        out.truncate(self.zlib.total_out() as usize);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::qcow2::COMPRESSION_ZLIB;

    #[test]
    fn zlib_streams_must_fill_the_cluster_exactly() {
        use flate2::write::DeflateEncoder;
        use std::io::Write;
        let deflate = |data: &[u8]| {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut inf = Inflater::new();
        let mut out = vec![0u8; 4096];
        let mut exact = deflate(&[7u8; 4096]);
        exact.extend_from_slice(&[0xee; 300]); // garbage up to the sector's end is allowed
        inf.inflate(COMPRESSION_ZLIB, &exact, &mut out).unwrap();
        assert_eq!(out, vec![7u8; 4096]);
        let e = inf.inflate(COMPRESSION_ZLIB, &deflate(&[7u8; 4000]), &mut out).unwrap_err();
        assert!(e.contains("inflates to 4000 bytes"), "{e}");
        let e = inf.inflate(COMPRESSION_ZLIB, &deflate(&[7u8; 4097]), &mut out).unwrap_err();
        assert!(e.contains("inflates past the cluster"), "{e}");
        let e = inf.inflate(COMPRESSION_ZLIB, &[0xff; 64], &mut out).unwrap_err();
        assert!(e.contains("does not inflate"), "{e}");
        // The same state, reset, after every kind of failure: a good stream still inflates.
        out.fill(0);
        inf.inflate(COMPRESSION_ZLIB, &exact, &mut out).unwrap();
        assert_eq!(out, vec![7u8; 4096]);
    }

    #[test]
    fn zstd_garbage_is_refused_and_the_decoder_stays_usable() {
        let mut inf = Inflater::new();
        let mut out = vec![0u8; 4096];
        let e = inf.inflate(COMPRESSION_ZSTD, b"junkjunkjunk", &mut out).unwrap_err();
        assert!(e.contains("is not a zstd frame"), "{e}");
        // A raw zstd block frame by hand: magic, frame header (single segment, 1-byte content
        // size 8), one last raw block of 8 bytes.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x20, 8];
        frame.extend([(8 << 3) | 1, 0, 0]);
        frame.extend(b"abcdefgh");
        let mut eight = [0u8; 8];
        inf.inflate(COMPRESSION_ZSTD, &frame, &mut eight).unwrap();
        assert_eq!(&eight, b"abcdefgh");
        let e = inf.inflate(COMPRESSION_ZSTD, &frame, &mut out[..9]).unwrap_err();
        assert!(e.contains("decompresses to 8 bytes, not the cluster's 9"), "{e}");
        let e = inf.inflate(COMPRESSION_ZSTD, &frame, &mut out[..7]).unwrap_err();
        assert!(e.contains("decompresses past the cluster's 7 bytes"), "{e}");
    }

    fn xorshift(x: &mut u64) -> u8 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x as u8
    }

    /// Inflate `stream` with a `bits`-bit window, 512 bytes of output per call, so that every
    /// back-reference past the current call's output must come from the window.
    fn inflate_stepwise(stream: &[u8], bits: u8, len: usize) -> Result<Vec<u8>, flate2::DecompressError> {
        let mut q = Decompress::new_with_window_bits(false, bits);
        let mut out = vec![0u8; len];
        while (q.total_out() as usize) < len {
            let (i, o) = (q.total_in() as usize, q.total_out() as usize);
            let end = (o + 512).min(len);
            if q.decompress(&stream[i..], &mut out[o..end], FlushDecompress::None)? == Status::StreamEnd {
                break;
            }
        }
        out.truncate(q.total_out() as usize);
        Ok(out)
    }

    /// What the writer deflates inflates back exactly with qemu's 4 KiB window (window bits
    /// -12: a distance past 4 KiB is "too far back"), and only what shrinks is deflated.
    #[test]
    fn deflated_clusters_inflate_with_qemus_window_and_only_when_smaller() {
        let mut x = 0x1234_5678_9abc_def1u64;
        // Text-like, then a 6 KiB random block repeated: its repeats lie 6 KiB back, beyond
        // qemu's window.
        let block: Vec<u8> = (0..6144).map(|_| xorshift(&mut x)).collect();
        let mut cluster: Vec<u8> = (0..32768).map(|i| b"the quick brown fox "[i % 20]).collect();
        cluster.extend((0..32768).map(|i| block[i % 6144]));
        let (mut d, mut out) = (Deflater::new(), Vec::new());
        assert!(d.deflate(&cluster, &mut out).unwrap());
        assert!(out.len() < cluster.len(), "{} bytes", out.len());
        assert!(inflate_stepwise(&out, ZLIB_WINDOW_BITS, 65536).unwrap() == cluster);
        // The check can fail: a 32 KiB-window stream of the same data is refused by it.
        let mut wide = Compress::new_with_window_bits(Compression::default(), false, 15);
        let mut w = vec![0u8; 65536];
        assert_eq!(wide.compress(&cluster, &mut w, FlushCompress::Finish).unwrap(), Status::StreamEnd);
        w.truncate(wide.total_out() as usize);
        assert!(inflate_stepwise(&w, ZLIB_WINDOW_BITS, 65536).is_err(), "distances past 4 KiB");
        let random: Vec<u8> = (0..65536).map(|_| xorshift(&mut x)).collect();
        assert!(!d.deflate(&random, &mut out).unwrap(), "random bytes do not shrink");
        assert!(out.is_empty());
        // The state is reset between clusters: the first cluster again gives the same stream.
        let (mut again, mut first) = (Vec::new(), Vec::new());
        assert!(d.deflate(&cluster, &mut again).unwrap());
        assert!(Deflater::new().deflate(&cluster, &mut first).unwrap());
        assert_eq!(again, first);
    }
}
