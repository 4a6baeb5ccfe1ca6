//! Words for the pictures: a vocabulary of tags (moods, genres, instruments,
//! settings, energy), scored against every 1 fps frame by a model that
//! relates pictures and text (CLIP), smoothed over time and summarised per
//! section, and turned into a music prompt per section.
//!
//! The scoring itself is the caller's (it needs the model); this module
//! holds the vocabulary and everything after the scores, so it can be tested
//! on scores made by hand.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// The vocabulary shipped with VidMusician.
pub const BUILTIN: &str = include_str!("../../data/vocabulary.txt");

/// Tags grouped in categories.
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    pub categories: Vec<Category>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    pub name: String,
    /// How many of its tags a section takes.
    pub pick: usize,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub name: String,
    /// Descriptions of a picture that shows it; their text embeddings are
    /// averaged into the tag's.
    pub pictures: Vec<String>,
    /// Words added to the prompt when the tag is chosen.
    pub music: String,
}

impl Vocabulary {
    /// The shipped vocabulary.
    pub fn builtin() -> Self {
        // The shipped file is parsed by a test; it cannot fail here.
        Self::parse(BUILTIN, "the built-in vocabulary").unwrap_or(Vocabulary {
            categories: Vec::new(),
        })
    }

    /// Reads a vocabulary file (the format is described at the top of the
    /// built-in one).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::opening(path, e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |line: usize, what: String| Error::Vocabulary {
            origin: origin.to_string(),
            line,
            reason: what,
        };
        let mut categories: Vec<Category> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(head) = line.strip_prefix('[') {
                let head = head
                    .strip_suffix(']')
                    .ok_or_else(|| bad(n, "a category header must end with ]".into()))?;
                let mut words = head.split_whitespace();
                let name = words
                    .next()
                    .ok_or_else(|| bad(n, "a category needs a name".into()))?;
                let mut pick = 1;
                for w in words {
                    let v = w.strip_prefix("pick=").ok_or_else(|| {
                        bad(
                            n,
                            format!("unknown category setting {w:?} (expected pick=N)"),
                        )
                    })?;
                    pick = v
                        .parse::<usize>()
                        .ok()
                        .filter(|p| (1..=8).contains(p))
                        .ok_or_else(|| bad(n, format!("pick={v}: expected 1 to 8")))?;
                }
                if categories.iter().any(|c| c.name == name) {
                    return Err(bad(n, format!("category [{name}] appears twice")));
                }
                categories.push(Category {
                    name: name.to_string(),
                    pick,
                    tags: Vec::new(),
                });
                continue;
            }
            let Some(cat) = categories.last_mut() else {
                return Err(bad(n, "a tag before any [category] header".into()));
            };
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [name, pictures, music] = fields[..] else {
                return Err(bad(
                    n,
                    format!(
                        "expected `tag | picture descriptions | music words`, found {} field(s)",
                        fields.len()
                    ),
                ));
            };
            let pictures: Vec<String> = pictures
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if name.is_empty() || pictures.is_empty() || music.is_empty() {
                return Err(bad(
                    n,
                    "a tag needs a name, at least one picture description and music words".into(),
                ));
            }
            if cat.tags.iter().any(|t| t.name == name) {
                return Err(bad(
                    n,
                    format!("tag {name:?} appears twice in [{}]", cat.name),
                ));
            }
            cat.tags.push(Tag {
                name: name.to_string(),
                pictures,
                music: music.to_string(),
            });
        }
        if let Some(c) = categories.iter().find(|c| c.tags.len() < 2) {
            return Err(Error::Vocabulary {
                origin: origin.to_string(),
                line: 0,
                reason: format!(
                    "category [{}] has {} tag(s); a category needs at least 2 to choose between",
                    c.name,
                    c.tags.len()
                ),
            });
        }
        if categories.is_empty() {
            return Err(Error::Vocabulary {
                origin: origin.to_string(),
                line: 0,
                reason: "no tags: the vocabulary is empty".into(),
            });
        }
        Ok(Self { categories })
    }

    /// Every tag in order, with its category: the columns of a score matrix.
    pub fn tags(&self) -> impl Iterator<Item = (&Category, &Tag)> {
        self.categories
            .iter()
            .flat_map(|c| c.tags.iter().map(move |t| (c, t)))
    }

    pub fn len(&self) -> usize {
        self.categories.iter().map(|c| c.tags.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A chosen tag and how sure the pictures are of it (its share of its
/// category, 0–1, averaged over the section).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chosen {
    pub category: String,
    pub tag: String,
    pub score: f32,
    #[serde(skip)]
    pub music: String,
}

/// A stretch of the video and the tags its pictures chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionTags {
    pub start: f64,
    pub end: f64,
    pub tags: Vec<Chosen>,
}

impl SectionTags {
    /// The prompt of this section: the user's words first (never replaced),
    /// then the chosen tags' words, then the tempo.
    pub fn prompt(&self, user: &str, bpm: Option<f64>) -> String {
        let mut parts: Vec<String> = Vec::new();
        let user = user.trim();
        if !user.is_empty() {
            parts.push(user.to_string());
        }
        parts.extend(self.tags.iter().map(|t| t.music.clone()));
        if let Some(b) = bpm {
            parts.push(format!("{} bpm", b.round()));
        }
        parts.join(", ")
    }
}

/// Seconds each side of a frame that its scores are averaged over: a single
/// odd frame (a flash, a title card) should not change the music.
pub const SMOOTH_S: f64 = 2.0;

/// Chooses tags per section from `logits[frame][tag]` (one row per 1 fps
/// frame, one column per tag of `vocab` in [`Vocabulary::tags`] order:
/// CLIP's scaled image–text similarities). Within each category the
/// logits become shares (softmax), which are smoothed over ±[`SMOOTH_S`]
/// and averaged over each section; a section takes its category's best
/// `pick` tags. `bounds` are the sections' starts (the first is 0), `end`
/// the video's length.
pub fn choose(
    vocab: &Vocabulary,
    logits: &[Vec<f32>],
    fps: f64,
    bounds: &[f64],
    end: f64,
) -> Vec<SectionTags> {
    let n_tags = vocab.len();
    let frames: Vec<&Vec<f32>> = logits.iter().filter(|r| r.len() == n_tags).collect();
    // Shares within each category, per frame.
    let shares: Vec<Vec<f32>> = frames
        .iter()
        .map(|row| {
            let mut out = vec![0.0f32; n_tags];
            let mut at = 0;
            for c in &vocab.categories {
                let span = &row[at..at + c.tags.len()];
                let max = span.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = span.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = exp.iter().sum::<f32>().max(f32::MIN_POSITIVE);
                for (o, e) in out[at..at + c.tags.len()].iter_mut().zip(exp) {
                    *o = e / sum;
                }
                at += c.tags.len();
            }
            out
        })
        .collect();
    let smooth = smooth(&shares, (SMOOTH_S * fps).round() as usize);
    let mut starts: Vec<f64> = bounds
        .iter()
        .copied()
        .filter(|b| b.is_finite() && *b > 0.0 && *b < end)
        .collect();
    starts.insert(0, 0.0);
    starts.sort_by(f64::total_cmp);
    starts.dedup();
    let mut out = Vec::with_capacity(starts.len());
    for (k, &start) in starts.iter().enumerate() {
        let stop = starts.get(k + 1).copied().unwrap_or(end);
        let a = ((start * fps).floor() as usize).min(smooth.len());
        let b = ((stop * fps).ceil() as usize).clamp(a, smooth.len());
        // A section shorter than a frame still takes the frame it is in.
        let rows: &[Vec<f32>] = if b > a {
            &smooth[a..b]
        } else if smooth.is_empty() {
            &[]
        } else {
            let i = a.min(smooth.len() - 1);
            &smooth[i..=i]
        };
        let mut tags = Vec::new();
        if !rows.is_empty() {
            let mean: Vec<f32> = (0..n_tags)
                .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32)
                .collect();
            let mut at = 0;
            for c in &vocab.categories {
                let mut ranked: Vec<usize> = (0..c.tags.len()).collect();
                ranked.sort_by(|x, y| mean[at + y].total_cmp(&mean[at + x]));
                for &i in ranked.iter().take(c.pick) {
                    tags.push(Chosen {
                        category: c.name.clone(),
                        tag: c.tags[i].name.clone(),
                        score: mean[at + i],
                        music: c.tags[i].music.clone(),
                    });
                }
                at += c.tags.len();
            }
        }
        out.push(SectionTags {
            start,
            end: stop,
            tags,
        });
    }
    out
}

/// Moving average over ±`half` rows.
fn smooth(rows: &[Vec<f32>], half: usize) -> Vec<Vec<f32>> {
    let n = rows.len();
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(n));
            let w = (b - a) as f32;
            let mut acc = vec![0.0f32; rows[i].len()];
            for r in &rows[a..b] {
                for (s, x) in acc.iter_mut().zip(r) {
                    *s += x / w;
                }
            }
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_vocabulary_reads() {
        let v = Vocabulary::parse(BUILTIN, "builtin").unwrap();
        let names: Vec<&str> = v.categories.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mood", "genre", "instruments", "setting", "energy"]);
        assert!(v.len() >= 40);
        assert_eq!(v.categories[2].pick, 2);
        assert_eq!(Vocabulary::builtin(), v);
    }

    #[test]
    fn bad_vocabularies_name_the_line() {
        for (text, needle) in [
            ("", "empty"),
            ("# only a comment\n", "empty"),
            ("calm | a calm scene | calm\n", "line 1"),
            ("[mood]\ncalm | a calm scene\n", "line 2"),
            ("[mood\n", "line 1"),
            ("[mood pick=0]\n", "line 1"),
            ("[mood]\ncalm | a | b\n", "at least 2"),
            ("[mood]\na | x | y\na | x | y\n", "line 3"),
            ("[mood]\na |  ; | y\n", "line 2"),
        ] {
            let e = Vocabulary::parse(text, "v.txt").unwrap_err().to_string();
            assert!(e.contains("v.txt"), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    fn two_by_two() -> Vocabulary {
        Vocabulary::parse(
            "[mood]\ncalm | c | calm\ntense | t | tense\n[setting pick=2]\nsea | s | flowing\ncity | y | urban\nsky | k | airy\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn sections_take_the_tags_their_frames_favour() {
        let v = two_by_two();
        // 10 frames: calm by the sea, then tense in the city from 5 s.
        let logits: Vec<Vec<f32>> = (0..10)
            .map(|i| {
                if i < 5 {
                    vec![3.0, 0.0, 2.0, 0.0, 1.0]
                } else {
                    vec![0.0, 3.0, 0.0, 2.0, 1.0]
                }
            })
            .collect();
        let s = choose(&v, &logits, 1.0, &[0.0, 5.0], 10.0);
        assert_eq!(s.len(), 2);
        let names = |k: usize| s[k].tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>();
        assert_eq!(names(0), ["calm", "sea", "sky"]);
        assert_eq!(names(1), ["tense", "city", "sky"]);
        assert_eq!((s[1].start, s[1].end), (5.0, 10.0));
        assert!(s[0].tags[0].score > 0.5 && s[0].tags[0].score < 1.0);
        assert_eq!(
            s[1].prompt("my words", Some(119.6)),
            "my words, tense, urban, airy, 120 bpm"
        );
        assert_eq!(s[0].prompt("", None), "calm, flowing, airy");
    }

    #[test]
    fn one_odd_frame_does_not_change_a_section() {
        let v = two_by_two();
        let mut logits: Vec<Vec<f32>> = (0..9).map(|_| vec![2.0, 0.0, 2.0, 0.0, 0.0]).collect();
        logits[4] = vec![0.0, 9.0, 0.0, 9.0, 0.0];
        let s = choose(&v, &logits, 1.0, &[0.0, 4.0, 5.0], 9.0);
        // The middle section is the odd frame alone; smoothing keeps it calm.
        assert_eq!(s[1].tags[0].tag, "calm");
    }

    #[test]
    fn degenerate_inputs_give_sections_without_panicking() {
        let v = two_by_two();
        assert!(choose(&v, &[], 1.0, &[0.0], 3.0)[0].tags.is_empty());
        let one = vec![vec![1.0, 0.0, 0.0, 0.0, 0.0]];
        let s = choose(&v, &one, 1.0, &[0.0, 0.5, 99.0, f64::NAN], 1.0);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|x| !x.tags.is_empty()));
        // Rows of the wrong width are ignored, not read out of bounds.
        let s = choose(&v, &[vec![1.0]], 1.0, &[0.0], 1.0);
        assert!(s[0].tags.is_empty());
    }
}
