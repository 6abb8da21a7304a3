//! Dequantisation of ggml tensor data to f32, block by block, following llama.cpp's
//! `dequantize_row_*` in ggml-quants.c (same operations in the same order, so results are
//! bit-identical to llama.cpp's and to the `gguf` Python package's numpy port).

use std::path::Path;

use half::f16;

use super::reader::GgmlType;
use crate::error::{ModelError, Result};

const QK_K: usize = 256;

/// Tensors with fewer elements than this are dequantised on the calling thread only.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// Whether [`dequantize`] handles `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

/// Dequantises `n_elements` values of type `ty` from `data` (tensor `tensor` of file `path`).
pub fn dequantize(
    path: &Path,
    tensor: &str,
    ty: GgmlType,
    data: &[u8],
    n_elements: u64,
) -> Result<Vec<f32>> {
    if !is_supported(ty) {
        return Err(ModelError::GgufTensorType {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            ggml_type: ty.to_string(),
        });
    }
    let expected = ty.bytes_for(n_elements);
    if expected != Some(data.len() as u64) {
        return Err(ModelError::gguf(
            path,
            format!(
                "tensor `{tensor}`: {n_elements} {ty} values need {} bytes, got {}",
                expected.map_or("a whole number of blocks and".to_string(), |e| e
                    .to_string()),
                data.len()
            ),
        ));
    }
    // `data.len()` bytes are mapped, so the element count (at most 2x the bytes for every
    // supported type) fits in usize.
    let mut out = vec![0f32; n_elements as usize];
    dequantize_into(ty, data, &mut out);
    Ok(out)
}

/// Fills `out` from `data`; the caller has checked the sizes and that `ty` is supported.
fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => run::<1, 4, _>(data, out, |b, y| y[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => run::<1, 2, _>(data, out, |b, y| {
            y[0] = f16::from_bits(u16::from_le_bytes(*b)).to_f32()
        }),
        GgmlType::BF16 => run::<1, 2, _>(data, out, |b, y| {
            y[0] = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16)
        }),
        GgmlType::Q4_0 => run::<32, 18, _>(data, out, q4_0),
        GgmlType::Q4_1 => run::<32, 20, _>(data, out, q4_1),
        GgmlType::Q5_0 => run::<32, 22, _>(data, out, q5_0),
        GgmlType::Q5_1 => run::<32, 24, _>(data, out, q5_1),
        GgmlType::Q8_0 => run::<32, 34, _>(data, out, q8_0),
        GgmlType::Q4_K => run::<QK_K, 144, _>(data, out, q4_k),
        GgmlType::Q5_K => run::<QK_K, 176, _>(data, out, q5_k),
        GgmlType::Q6_K => run::<QK_K, 210, _>(data, out, q6_k),
        _ => unreachable!("checked by is_supported"),
    }
}

/// Applies `f` to each block of `TS` bytes, writing `BS` values; splits big tensors over threads.
fn run<const BS: usize, const TS: usize, F>(data: &[u8], out: &mut [f32], f: F)
where
    F: Fn(&[u8; TS], &mut [f32; BS]) + Copy + Send,
{
    let threads = if out.len() >= PARALLEL_MIN_ELEMENTS {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    let (blocks, _) = data.as_chunks::<TS>();
    let (ys, _) = out.as_chunks_mut::<BS>();
    // `dequantize` checked the sizes against the type table, which must agree with BS/TS.
    debug_assert!(blocks.len() == ys.len() && data.len() == blocks.len() * TS);
    if threads <= 1 {
        blocks.iter().zip(ys.iter_mut()).for_each(|(b, y)| f(b, y));
        return;
    }
    let per_thread = blocks.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (bs, ys) in blocks.chunks(per_thread).zip(ys.chunks_mut(per_thread)) {
            s.spawn(move || bs.iter().zip(ys.iter_mut()).for_each(|(b, y)| f(b, y)));
        }
    });
}

#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// block_q4_0: d (f16), qs[16]; low nibbles are elements 0..16, high nibbles 16..32.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as i32 - 8;
        let x1 = (qs[j] >> 4) as i32 - 8;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// block_q4_1: d, m (f16), qs[16].
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        let x0 = (qs[j] & 0x0F) as f32;
        let x1 = (qs[j] >> 4) as f32;
        y[j] = x0 * d + m;
        y[j + 16] = x1 * d + m;
    }
}

/// block_q5_0: d (f16), qh (u32, the 5th bits), qs[16].
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0F) | xh_0) as i32 - 16;
        let x1 = ((qs[j] >> 4) | xh_1) as i32 - 16;
        y[j] = x0 as f32 * d;
        y[j + 16] = x1 as f32 * d;
    }
}

/// block_q5_1: d, m (f16), qh (u32), qs[16].
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        let x0 = ((qs[j] & 0x0F) | xh_0) as f32;
        let x1 = ((qs[j] >> 4) | xh_1) as f32;
        y[j] = x0 * d + m;
        y[j + 16] = x1 * d + m;
    }
}

/// block_q8_0: d (f16), qs[32] (i8).
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// llama.cpp's get_scale_min_k4: the j-th 6-bit scale and min of the 12 packed bytes.
#[inline(always)]
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// block_q4_K: d, dmin (f16), scales[12], qs[128]; 8 sub-blocks of 32.
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (i, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = get_scale_min_k4(2 * i, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = get_scale_min_k4(2 * i + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// block_q5_K: d, dmin (f16), scales[12], qh[32], qs[128].
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (i, (ql, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = get_scale_min_k4(2 * i, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = get_scale_min_k4(2 * i + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - m1;
            y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// block_q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d (f16).
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            // Same evaluation order as llama.cpp: (d * scale) * q.
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
