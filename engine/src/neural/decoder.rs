//! The MusicGen decoder: a pre-LayerNorm transformer over the sum of the codebook
//! embeddings, with sinusoidal positions, causal self-attention with a KV cache,
//! cross-attention to the conditioning states, a GELU feed-forward and one LM head per
//! codebook.
//!
//! It runs on plain f32 buffers rather than candle tensors: a decoder step is bound by
//! reading the weights, and [`kernels::gemv`] reads each weight once for every row of
//! a step (both classifier-free-guidance branches share one pass). Many rows at once
//! (a prompt read in one go) go through candle's matrix product instead.
//!
//! Two inputs beyond MusicGen's own exist for the VidMusician method: the
//! cross-attention takes any sequence of states (text, and later text + visual), and
//! each layer can take an additive input before its self-attention (in-attention).

use candle_core::{Device, Tensor};

use super::config::DecoderConfig;
use super::kernels::{self, add_into, gemv};
use super::pool;
use super::weights::Weights;
use crate::{Error, Result};

const LN_EPS: f32 = 1e-5;

/// Rows up to which a product uses [`gemv`]; more go through a matrix product.
const GEMV_MAX_ROWS: usize = 4;

/// How the decoder's weights are held.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Precision {
    /// As the checkpoint has them.
    #[default]
    F32,
    /// 8 bits per weight with a scale per 32 ([`kernels::Q8`]): a quarter of the
    /// memory traffic per step, for a small loss of accuracy.
    Q8,
}

enum Store {
    F32(Vec<f32>),
    Q8(kernels::Q8),
}

/// A row-major `out × inn` weight.
struct Mat {
    w: Store,
    out: usize,
    inn: usize,
}

impl Mat {
    /// The checkpoint's weights `parts` (names and row counts, each `rows × inn`),
    /// stacked along the output axis as one matrix in `precision`. Each part is
    /// quantised straight from the file as it is read, so an 8-bit decoder never
    /// holds a weight in f32; rows that do not split into blocks stay in f32.
    fn load(
        w: &Weights,
        parts: &[(String, usize)],
        inn: usize,
        precision: Precision,
    ) -> Result<Self> {
        let out = parts.iter().map(|(_, rows)| rows).sum();
        let q8 = match precision {
            Precision::Q8 => kernels::Q8::zeroed(out, inn),
            Precision::F32 => None,
        };
        let store = match q8 {
            Some(mut q) => {
                let mut first = 0;
                for (name, rows) in parts {
                    w.with_f32(&[*rows, inn], name, |v| {
                        q.set_rows(first, v);
                        Ok(())
                    })?;
                    first += rows;
                }
                Store::Q8(q)
            }
            None => {
                let mut all = Vec::with_capacity(out * inn);
                for (name, rows) in parts {
                    w.with_f32(&[*rows, inn], name, |v| {
                        all.extend_from_slice(v);
                        Ok(())
                    })?;
                }
                Store::F32(all)
            }
        };
        Ok(Self { w: store, out, inn })
    }

    fn f32_weights(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.w {
            Store::F32(w) => std::borrow::Cow::Borrowed(w),
            Store::Q8(q) => std::borrow::Cow::Owned(q.dequantize()),
        }
    }

    /// Converts to `precision`; a matrix whose rows do not split into blocks stays
    /// in f32.
    fn set_precision(&mut self, precision: Precision) {
        let next = match (&self.w, precision) {
            (Store::F32(w), Precision::Q8) => {
                kernels::Q8::quantize(w, self.out, self.inn).map(Store::Q8)
            }
            (Store::Q8(q), Precision::F32) => Some(Store::F32(q.dequantize())),
            _ => None,
        };
        if let Some(n) = next {
            self.w = n;
        }
    }

    /// `rows` inputs of length `inn`, packed → `rows` outputs of length `out`.
    fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let mut y = vec![0f32; rows * self.out];
        if rows <= GEMV_MAX_ROWS {
            let xs: Vec<&[f32]> = x.chunks_exact(self.inn).collect();
            let mut ys: Vec<&mut [f32]> = y.chunks_exact_mut(self.out).collect();
            match &self.w {
                Store::F32(w) => gemv(w, self.inn, &xs, &mut ys),
                Store::Q8(q) => kernels::gemv_q8(q, &xs, &mut ys),
            }
        } else {
            let w = Tensor::from_slice(&self.f32_weights(), (self.out, self.inn), &Device::Cpu)?;
            let xt = Tensor::from_slice(x, (rows, self.inn), &Device::Cpu)?;
            y = xt.matmul(&w.t()?)?.flatten_all()?.to_vec1()?;
        }
        Ok(y)
    }
}

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn load(w: &Weights, dim: usize) -> Result<Self> {
        Ok(Self {
            w: w.get(&[dim], "weight")?.to_vec1()?,
            b: w.get(&[dim], "bias")?.to_vec1()?,
        })
    }

    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let dim = self.w.len();
        let mut out = vec![0f32; rows * dim];
        for (xr, yr) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            kernels::layer_norm(xr, &self.w, &self.b, LN_EPS, yr);
        }
        out
    }
}

struct Layer {
    self_norm: Norm,
    /// q, k and v stacked: `3·hidden × hidden`.
    qkv: Mat,
    self_out: Mat,
    cross_norm: Norm,
    cross_q: Mat,
    /// k and v stacked, for [`Decoder::cross_kv`].
    cross_kv: Mat,
    cross_out: Mat,
    ff_norm: Norm,
    fc1: Mat,
    fc2: Mat,
}

impl Layer {
    fn set_precision(&mut self, precision: Precision) {
        for m in [
            &mut self.qkv,
            &mut self.self_out,
            &mut self.cross_q,
            &mut self.cross_kv,
            &mut self.cross_out,
            &mut self.fc1,
            &mut self.fc2,
        ] {
            m.set_precision(precision);
        }
    }
}

pub struct Decoder {
    /// Per codebook, `(vocab + 1) × hidden`.
    embed: Vec<Vec<f32>>,
    /// `max_positions × hidden`: not in checkpoints; built as transformers builds it.
    positions: Vec<f32>,
    layers: Vec<Layer>,
    norm: Norm,
    /// The codebooks' LM heads stacked: `codebooks·vocab × hidden`.
    heads: Mat,
    cfg: DecoderConfig,
    device: Device,
    precision: Precision,
}

/// Keys or values of one layer, head-major (`heads × cap × head_dim`): each head's
/// rows are one contiguous run, read in order by attention. Held in f32, or in f16
/// with 8-bit weights: half the bytes that attention reads per step (it reads the
/// whole cache every step) and half the cache's memory, within the 8-bit mode's own
/// error.
#[derive(Default)]
struct HeadRows {
    cells: Cells,
    cap: usize,
}

enum Cells {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Default for Cells {
    fn default() -> Self {
        Self::F32(Vec::new())
    }
}

impl HeadRows {
    fn new(half: bool) -> Self {
        Self {
            cells: if half {
                Cells::F16(Vec::new())
            } else {
                Cells::F32(Vec::new())
            },
            cap: 0,
        }
    }

    /// Writes `row` (`heads · hd` values, head after head) as position `pos`, growing
    /// the capacity (by doubling) when needed.
    fn put(&mut self, pos: usize, row: &[f32], heads: usize) {
        let hd = row.len() / heads;
        if pos >= self.cap {
            self.grow((pos + 1).max(self.cap * 2).max(16), heads * hd, heads);
        }
        for (head, part) in row.chunks_exact(hd).enumerate() {
            let at = (head * self.cap + pos) * hd;
            match &mut self.cells {
                Cells::F32(d) => d[at..][..hd].copy_from_slice(part),
                Cells::F16(d) => {
                    for (c, &v) in d[at..][..hd].iter_mut().zip(part) {
                        *c = half::f16::from_f32(v);
                    }
                }
            }
        }
    }

    /// Room for `cap` positions of `width` values (`heads` heads), keeping what is
    /// stored.
    fn grow(&mut self, cap: usize, width: usize, heads: usize) {
        fn regrow<T: Copy + Default>(
            old: &[T],
            heads: usize,
            run: usize,
            new_run: usize,
        ) -> Vec<T> {
            let mut data = vec![T::default(); heads * new_run];
            for head in 0..heads {
                data[head * new_run..][..run].copy_from_slice(&old[head * run..][..run]);
            }
            data
        }
        if cap <= self.cap {
            return;
        }
        let hd = width / heads;
        let (run, new_run) = (self.cap * hd, cap * hd);
        self.cells = match &self.cells {
            Cells::F32(d) => Cells::F32(regrow(d, heads, run, new_run)),
            Cells::F16(d) => Cells::F16(regrow(d, heads, run, new_run)),
        };
        self.cap = cap;
    }

    /// The first `len` positions of `head`.
    fn head(&self, head: usize, hd: usize, len: usize) -> kernels::Kv<'_> {
        let at = head * self.cap * hd;
        match &self.cells {
            Cells::F32(d) => kernels::Kv::F32(&d[at..][..len * hd]),
            Cells::F16(d) => kernels::Kv::F16(&d[at..][..len * hd]),
        }
    }
}

/// Cross-attention keys and values of one sequence of conditioning states, computed
/// once per generation.
pub struct CrossKv {
    /// Per layer, keys and values of `len` positions.
    kv: Vec<(HeadRows, HeadRows)>,
    /// Additive score bias per position: 0, or the most negative f32 at padding.
    bias: Vec<f32>,
    len: usize,
}

/// The self-attention cache of one sequence.
#[derive(Default)]
pub struct SelfCache {
    /// Per layer, keys and values of `len` positions, growing as positions are added.
    layers: Vec<(HeadRows, HeadRows)>,
    len: usize,
}

impl SelfCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One sequence's part of a decoder call.
pub struct SeqInput<'a> {
    /// `codebooks × positions` tokens, codebook-major.
    pub tokens: &'a [u32],
    /// Conditioning; `None` for the unconditional branch of classifier-free
    /// guidance, which sees zeroed states: their keys and values are zero, so its
    /// cross-attention adds exactly nothing and is skipped.
    pub cross: Option<&'a CrossKv>,
    pub cache: &'a mut SelfCache,
}

impl Decoder {
    /// Loads from `w` pointing at `decoder` in a MusicGen checkpoint (which holds
    /// `model.decoder.*` and `lm_heads.*`).
    pub fn load(w: &Weights, cfg: &DecoderConfig) -> Result<Self> {
        Self::load_as(w, cfg, Precision::F32)
    }

    /// [`Decoder::load`] straight into `precision`: each layer is converted as soon as
    /// it is read, so an 8-bit decoder never holds all its weights in f32 at once
    /// (about a quarter of the f32 decoder's memory at the peak of loading).
    pub fn load_as(w: &Weights, cfg: &DecoderConfig, precision: Precision) -> Result<Self> {
        let h = cfg.hidden_size;
        let d = w.pp("model.decoder");
        let embed = (0..cfg.num_codebooks)
            .map(|k| {
                d.with_f32(
                    &[cfg.vocab_size + 1, h],
                    &format!("embed_tokens.{k}.weight"),
                    |v| Ok(v.to_vec()),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = d.pp(format!("layers.{i}"));
            let mat = |names: &[&str], rows: usize, inn: usize| {
                let parts: Vec<(String, usize)> = names
                    .iter()
                    .map(|n| (format!("{n}.weight"), rows))
                    .collect();
                Mat::load(&l, &parts, inn, precision)
            };
            layers.push(Layer {
                self_norm: Norm::load(&l.pp("self_attn_layer_norm"), h)?,
                qkv: mat(
                    &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                    h,
                    h,
                )?,
                self_out: mat(&["self_attn.out_proj"], h, h)?,
                cross_norm: Norm::load(&l.pp("encoder_attn_layer_norm"), h)?,
                cross_q: mat(&["encoder_attn.q_proj"], h, h)?,
                cross_kv: mat(&["encoder_attn.k_proj", "encoder_attn.v_proj"], h, h)?,
                cross_out: mat(&["encoder_attn.out_proj"], h, h)?,
                ff_norm: Norm::load(&l.pp("final_layer_norm"), h)?,
                fc1: mat(&["fc1"], cfg.ffn_dim, h)?,
                fc2: mat(&["fc2"], h, cfg.ffn_dim)?,
            });
        }
        let heads = (0..cfg.num_codebooks)
            .map(|k| (format!("lm_heads.{k}.weight"), cfg.vocab_size))
            .collect::<Vec<_>>();
        let heads = Mat::load(w, &heads, h, precision)?;
        Ok(Self {
            embed,
            positions: sinusoids(cfg.max_position_embeddings, h),
            layers,
            norm: Norm::load(&d.pp("layer_norm"), h)?,
            heads,
            cfg: cfg.clone(),
            device: w.device().clone(),
            precision,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Holds the weights of every product in `precision` from now on (and the
    /// self-attention caches made from now on: f16 with 8-bit weights).
    /// How the weights are held.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        for l in &mut self.layers {
            l.set_precision(precision);
        }
        self.heads.set_precision(precision);
    }

    pub fn new_cache(&self) -> SelfCache {
        let half = self.precision == Precision::Q8;
        SelfCache {
            layers: (0..self.layers.len())
                .map(|_| (HeadRows::new(half), HeadRows::new(half)))
                .collect(),
            len: 0,
        }
    }

    /// A cache with room for `positions` from the start, for a generation whose
    /// length is known: growing by doubling could hold up to twice that.
    pub fn cache_for(&self, positions: usize) -> SelfCache {
        let mut cache = self.new_cache();
        let (h, heads) = (self.cfg.hidden_size, self.cfg.num_attention_heads);
        let cap = positions.min(self.cfg.max_position_embeddings);
        for (k, v) in &mut cache.layers {
            k.grow(cap, h, heads);
            v.grow(cap, h, heads);
        }
        cache
    }

    /// Cross-attention keys/values for each sequence of `states`
    /// `(batch, len, hidden)`; `mask` `(batch, len)` is 1 for real positions and 0
    /// for padding.
    pub fn cross_kv(&self, states: &Tensor, mask: Option<&Tensor>) -> Result<Vec<CrossKv>> {
        let (b, len, h) = states.dims3()?;
        let heads = self.cfg.num_attention_heads;
        if h != self.cfg.hidden_size {
            return Err(Error::InvalidSetting(format!(
                "conditioning states of width {h} for a decoder of width {}",
                self.cfg.hidden_size
            )));
        }
        let states: Vec<f32> = states.flatten_all()?.to_vec1()?;
        let mask: Option<Vec<f32>> = match mask {
            Some(m) => Some(
                m.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1()?,
            ),
            None => None,
        };
        (0..b)
            .map(|i| {
                let x = &states[i * len * h..(i + 1) * len * h];
                let kv = self
                    .layers
                    .iter()
                    .map(|l| {
                        let both = l.cross_kv.apply(x, len)?;
                        let (mut k, mut v) = (HeadRows::default(), HeadRows::default());
                        // Last position first: the capacity is set once.
                        for (pos, row) in both.chunks_exact(2 * h).enumerate().rev() {
                            k.put(pos, &row[..h], heads);
                            v.put(pos, &row[h..], heads);
                        }
                        Ok((k, v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bias = match &mask {
                    Some(m) => m[i * len..(i + 1) * len]
                        .iter()
                        .map(|&v| if v > 0.5 { 0.0 } else { f32::MIN })
                        .collect(),
                    None => vec![0.0; len],
                };
                Ok(CrossKv { kv, bias, len })
            })
            .collect()
    }

    /// Runs each sequence's tokens at the positions after what its cache holds and
    /// returns logits, `(sequence, codebook, position, vocab)` flattened. Every
    /// sequence must bring the same number of positions.
    ///
    /// `layer_inputs[i]`, when present, is added to the hidden state of every row
    /// (`rows × hidden`, rows in sequence-then-position order) before layer `i`.
    pub fn forward(
        &self,
        seqs: &mut [SeqInput<'_>],
        layer_inputs: &[Option<Vec<f32>>],
    ) -> Result<Vec<f32>> {
        let k = self.cfg.num_codebooks;
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let hd = h / heads;
        let vocab = self.cfg.vocab_size;
        let Some(first) = seqs.first() else {
            return Ok(Vec::new());
        };
        let len = first.tokens.len() / k;
        for s in seqs.iter() {
            if s.tokens.len() != k * len || len == 0 {
                return Err(Error::InvalidSetting(format!(
                    "each sequence needs {k} codebooks × {len} positions of tokens"
                )));
            }
            if s.cache.layers.len() != self.layers.len() {
                return Err(Error::InvalidSetting("a cache from another decoder".into()));
            }
            if s.cache.len + len > self.cfg.max_position_embeddings {
                return Err(Error::InvalidSetting(format!(
                    "a decoder window of {} steps is longer than the model's {} positions",
                    s.cache.len + len,
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize > vocab) {
                return Err(Error::InvalidSetting(format!(
                    "token {t} outside the codebooks"
                )));
            }
        }
        let rows = seqs.len() * len;
        // Embeddings and positions.
        let mut x = vec![0f32; rows * h];
        for (si, s) in seqs.iter().enumerate() {
            for t in 0..len {
                let xr = &mut x[(si * len + t) * h..(si * len + t + 1) * h];
                let pos = s.cache.len + t;
                xr.copy_from_slice(&self.positions[pos * h..(pos + 1) * h]);
                for (cb, table) in self.embed.iter().enumerate() {
                    let tok = s.tokens[cb * len + t] as usize;
                    for (a, b) in xr.iter_mut().zip(&table[tok * h..(tok + 1) * h]) {
                        *a += b;
                    }
                }
            }
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            if let Some(Some(add)) = layer_inputs.get(li) {
                if add.len() != rows * h {
                    return Err(Error::InvalidSetting(format!(
                        "layer input {li} has {} values, expected {}",
                        add.len(),
                        rows * h
                    )));
                }
                for (a, b) in x.iter_mut().zip(add) {
                    *a += b;
                }
            }
            // Self-attention.
            let n = layer.self_norm.apply(&x, rows);
            let qkv = layer.qkv.apply(&n, rows)?;
            for (si, s) in seqs.iter_mut().enumerate() {
                let (kc, vc) = &mut s.cache.layers[li];
                for t in 0..len {
                    let r = &qkv[(si * len + t) * 3 * h..(si * len + t + 1) * 3 * h];
                    kc.put(s.cache.len + t, &r[h..2 * h], heads);
                    vc.put(s.cache.len + t, &r[2 * h..], heads);
                }
            }
            // Every (row, head) attends independently: spread them over the threads.
            let sources: Vec<Source<'_>> = seqs
                .iter()
                .enumerate()
                .flat_map(|(si, s)| {
                    let (kc, vc) = &s.cache.layers[li];
                    (0..len).map(move |t| Source {
                        q: si * len + t,
                        keys: kc,
                        values: vc,
                        // Causal: this position and those before it.
                        len: s.cache.len + t + 1,
                        bias: None,
                    })
                })
                .collect();
            let att = attention(&qkv, 3 * h, &sources, heads, hd, scale);
            let o = layer.self_out.apply(&att, rows)?;
            add_into(&mut x, &o);
            // Cross-attention, for the rows of sequences that have conditioning.
            let cond: Vec<usize> = seqs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.cross.is_some())
                .flat_map(|(si, _)| (si * len..(si + 1) * len).collect::<Vec<_>>())
                .collect();
            if !cond.is_empty() {
                let xs: Vec<f32> = cond
                    .iter()
                    .flat_map(|&r| x[r * h..(r + 1) * h].iter().copied())
                    .collect();
                let n = layer.cross_norm.apply(&xs, cond.len());
                let q = layer.cross_q.apply(&n, cond.len())?;
                let sources: Vec<Source<'_>> = cond
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let c = seqs[r / len]
                            .cross
                            .expect("rows are of conditioned sequences");
                        let (ck, cv) = &c.kv[li];
                        Source {
                            q: i,
                            keys: ck,
                            values: cv,
                            len: c.len,
                            bias: Some(&c.bias),
                        }
                    })
                    .collect();
                let att = attention(&q, h, &sources, heads, hd, scale);
                let o = layer.cross_out.apply(&att, cond.len())?;
                for (i, &r) in cond.iter().enumerate() {
                    add_into(&mut x[r * h..(r + 1) * h], &o[i * h..(i + 1) * h]);
                }
            }
            // Feed-forward.
            let n = layer.ff_norm.apply(&x, rows);
            let mut f = layer.fc1.apply(&n, rows)?;
            // erf per value: worth both threads.
            pool::for_each_piece(&mut f, 256, &|_, piece| kernels::gelu(piece));
            let o = layer.fc2.apply(&f, rows)?;
            add_into(&mut x, &o);
        }
        for s in seqs.iter_mut() {
            s.cache.len += len;
        }
        let n = self.norm.apply(&x, rows);
        let logits = self.heads.apply(&n, rows)?;
        // rows × (codebook, vocab) → (sequence, codebook, position, vocab)
        let mut out = vec![0f32; rows * k * vocab];
        for si in 0..seqs.len() {
            for t in 0..len {
                let src = &logits[(si * len + t) * k * vocab..(si * len + t + 1) * k * vocab];
                for cb in 0..k {
                    let dst = ((si * k + cb) * len + t) * vocab;
                    out[dst..dst + vocab].copy_from_slice(&src[cb * vocab..(cb + 1) * vocab]);
                }
            }
        }
        Ok(out)
    }
}

/// What one query row attends to.
struct Source<'a> {
    /// The query's row in the packed queries.
    q: usize,
    /// `len × hidden` keys and values (at least `len` rows).
    keys: &'a HeadRows,
    values: &'a HeadRows,
    len: usize,
    /// Additive score bias per key.
    bias: Option<&'a [f32]>,
}

/// Multi-head attention of each source's query row (the first `hidden` values of
/// row `q` of `queries`, rows `row_len` apart) → `sources × hidden`. Every (row, head)
/// pair is independent, so they are split across the step's threads.
fn attention(
    queries: &[f32],
    row_len: usize,
    sources: &[Source<'_>],
    heads: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let h = heads * hd;
    let mut out = vec![0f32; sources.len() * h];
    let longest = sources.iter().map(|s| s.len).max().unwrap_or(0);
    pool::for_each_piece(&mut out, hd, &|first, piece| {
        let mut scores = vec![0f32; longest];
        for (i, oh) in piece.chunks_exact_mut(hd).enumerate() {
            let (row, head) = ((first + i) / heads, (first + i) % heads);
            let s = &sources[row];
            let q = &queries[s.q * row_len + head * hd..][..hd];
            kernels::attend_head(
                q,
                s.keys.head(head, hd, s.len),
                s.values.head(head, hd, s.len),
                s.bias,
                scale,
                &mut scores,
                oh,
            );
        }
    });
    out
}

/// The decoder's sinusoidal position table: cos in the first half, sin in the second,
/// as transformers' `MusicgenSinusoidalPositionalEmbedding` builds it (in f32).
pub fn sinusoids(positions: usize, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut table = vec![0f32; positions * dim];
    for p in 0..positions {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (i, f) in freqs.iter().enumerate() {
            let a = p as f32 * f;
            row[i] = a.cos();
            row[half + i] = a.sin();
        }
    }
    table
}
