//! Kubernetes resource quantities (`64Mi`, `1G`, `63500m`, `1e3`) with exact
//! integer arithmetic.
//!
//! A [`Quantity`] stores its value as `num / 10^scale` in an `i128`, never as
//! a float, so `1G` (10^9) and `1Gi` (2^30) compare exactly and `1024M` is
//! 1,024,000,000 bytes. Like Kubernetes, precision finer than `1n` is rounded
//! up (away from zero) and the canonical printed form keeps the suffix family
//! the value was written in (binary, decimal or exponent).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Largest decimal scale kept: nano (10^-9), as Kubernetes does.
const MAX_SCALE: u32 = 9;
/// Values are limited to |v| < 2^63 (Kubernetes' own int64 limit for most
/// uses), i.e. |num| < 2^63 · 10^9, so cross-scale comparisons fit in i128.
const MAX_ABS_NUM: i128 = (i64::MAX as i128 + 1) * 1_000_000_000;

/// How a quantity was written; decides the canonical printed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantityFormat {
    /// Powers of two: `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySi,
    /// Powers of ten: `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`.
    DecimalSi,
    /// Scientific form: `1e3`, `5E-3`.
    DecimalExponent,
}

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string was empty.
    #[error("quantity is empty")]
    Empty,
    /// The number part is missing or malformed.
    #[error("quantity {input:?} has no valid number (expected e.g. `64Mi`, `1G`, `500m`, `1e3`)")]
    BadNumber {
        /// The rejected input.
        input: String,
    },
    /// The suffix is not one Kubernetes knows.
    #[error("quantity {input:?} has unknown suffix {suffix:?} (allowed: Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3)")]
    BadSuffix {
        /// The rejected input.
        input: String,
        /// The suffix that was not understood.
        suffix: String,
    },
    /// The value is too large to represent exactly.
    #[error("quantity {input:?} is out of range (magnitude must be below 2^63)")]
    OutOfRange {
        /// The rejected input.
        input: String,
    },
    /// A negative value where only non-negative ones make sense.
    #[error("quantity {0} is negative")]
    Negative(String),
}

/// An exact Kubernetes quantity.
#[derive(Clone, Copy, Debug)]
pub struct Quantity {
    num: i128,
    scale: u32,
    format: QuantityFormat,
}

const BINARY: [(&str, u32); 6] = [
    ("Ki", 1),
    ("Mi", 2),
    ("Gi", 3),
    ("Ti", 4),
    ("Pi", 5),
    ("Ei", 6),
];
const DECIMAL: [(&str, i32); 10] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("", 0),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];

fn pow10(e: u32) -> Option<i128> {
    10i128.checked_pow(e)
}

impl Quantity {
    /// A quantity of `bytes`, printed in binary form (`Ki`, `Mi`, …).
    pub fn from_bytes(bytes: u64) -> Self {
        Self::from_int(i128::from(bytes), QuantityFormat::BinarySi)
    }

    /// A quantity of the integer `value` in the given format.
    pub fn from_int(value: i128, format: QuantityFormat) -> Self {
        Quantity {
            num: value,
            scale: 0,
            format,
        }
    }

    /// The suffix family this quantity prints in.
    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    /// True when the value is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.num == 0
    }

    /// True when the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.num < 0
    }

    /// True when the value has no fractional part.
    pub fn is_integer(&self) -> bool {
        self.scale == 0
    }

    /// The value rounded up to a whole number (Kubernetes `Value()`).
    pub fn ceil_i128(&self) -> i128 {
        let d = pow10(self.scale).unwrap_or(1);
        let q = self.num.div_euclid(d);
        if self.num.rem_euclid(d) == 0 {
            q
        } else {
            q + 1
        }
    }

    /// The value as a byte count, rounded up; negative values are an error.
    pub fn to_bytes(&self) -> Result<u64, QuantityError> {
        if self.is_negative() {
            return Err(QuantityError::Negative(self.to_string()));
        }
        u64::try_from(self.ceil_i128()).map_err(|_| QuantityError::OutOfRange {
            input: self.to_string(),
        })
    }

    /// The value in thousandths, rounded up (Kubernetes `MilliValue()`),
    /// as used for CPU quantities such as `63500m`.
    pub fn milli_value(&self) -> i128 {
        Quantity {
            num: self.num * 1000,
            scale: self.scale,
            format: self.format,
        }
        .ceil_i128()
    }

    /// `self + other`, exact; `None` on overflow.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let scale = self.scale.max(other.scale);
        let a = self.num.checked_mul(pow10(scale - self.scale)?)?;
        let b = other.num.checked_mul(pow10(scale - other.scale)?)?;
        let num = a.checked_add(b)?;
        let q = Quantity {
            num,
            scale,
            format: self.format,
        }
        .normalized();
        q.in_range().then_some(q)
    }

    /// `self - other`, exact; `None` on overflow.
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let neg = Quantity {
            num: -other.num,
            ..*other
        };
        self.checked_add(&neg)
    }

    /// True when `self` is an exact whole multiple of `unit` (> 0).
    pub fn is_multiple_of(&self, unit: &Quantity) -> bool {
        if unit.num <= 0 {
            return false;
        }
        let scale = self.scale.max(unit.scale);
        let (Some(pa), Some(pb)) = (pow10(scale - self.scale), pow10(scale - unit.scale)) else {
            return false;
        };
        let (Some(a), Some(b)) = (self.num.checked_mul(pa), unit.num.checked_mul(pb)) else {
            return false;
        };
        a % b == 0
    }

    /// |value| < 2^63, i.e. |num| < 2^63 · 10^scale (scale <= 9).
    fn in_range(&self) -> bool {
        let limit = MAX_ABS_NUM / pow10(MAX_SCALE - self.scale.min(MAX_SCALE)).unwrap_or(1);
        self.num.abs() < limit
    }

    fn normalized(mut self) -> Self {
        while self.scale > 0 && self.num % 10 == 0 {
            self.num /= 10;
            self.scale -= 1;
        }
        self
    }

    fn parse(input: &str) -> Result<Self, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        let bad_number = || QuantityError::BadNumber {
            input: input.to_string(),
        };
        let out_of_range = || QuantityError::OutOfRange {
            input: input.to_string(),
        };
        let bytes = input.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if bytes[0] == b'+' || bytes[0] == b'-' {
            negative = bytes[0] == b'-';
            i = 1;
        }
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &input[int_start..i];
        let mut frac_digits = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fs = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &input[fs..i];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(bad_number());
        }
        let suffix = &input[i..];
        // Accumulate significant digits exactly.
        let mut num: i128 = 0;
        let mut scale: u32 = 0;
        for (k, c) in int_digits.bytes().chain(frac_digits.bytes()).enumerate() {
            let is_frac = k >= int_digits.len();
            if is_frac && scale >= MAX_SCALE + 20 {
                // Digits far beyond nano precision only matter for the
                // round-up; remember that something non-zero was there.
                if c != b'0' && num % 10 == 0 {
                    num += 1;
                }
                continue;
            }
            num = num
                .checked_mul(10)
                .and_then(|n| n.checked_add(i128::from(c - b'0')))
                .ok_or_else(out_of_range)?;
            if is_frac {
                scale += 1;
            }
            if num >= MAX_ABS_NUM * 1_000_000 {
                return Err(out_of_range());
            }
        }
        let format;
        // Exact suffixes first: `E` and `Ei` are exa/exbi, not exponents.
        if let Some((_, k)) = BINARY.iter().find(|(s, _)| *s == suffix) {
            format = QuantityFormat::BinarySi;
            num = num
                .checked_mul(1i128 << (10 * k))
                .ok_or_else(out_of_range)?;
        } else if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
            format = QuantityFormat::DecimalSi;
            apply_pow10(&mut num, &mut scale, *e).ok_or_else(out_of_range)?;
        } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
            let e: i32 = exp.parse().map_err(|_| QuantityError::BadSuffix {
                input: input.to_string(),
                suffix: suffix.to_string(),
            })?;
            format = QuantityFormat::DecimalExponent;
            apply_pow10(&mut num, &mut scale, e).ok_or_else(out_of_range)?;
        } else {
            return Err(QuantityError::BadSuffix {
                input: input.to_string(),
                suffix: suffix.to_string(),
            });
        }
        // Round up (away from zero) to nano precision.
        if scale > MAX_SCALE {
            let d = pow10(scale - MAX_SCALE).ok_or_else(out_of_range)?;
            let q = num / d;
            num = if num % d != 0 { q + 1 } else { q };
            scale = MAX_SCALE;
        }
        if negative {
            num = -num;
        }
        let q = Quantity { num, scale, format }.normalized();
        if !q.in_range() {
            return Err(out_of_range());
        }
        Ok(q)
    }

    fn cmp_value(&self, other: &Quantity) -> Ordering {
        let scale = self.scale.max(other.scale);
        // Both scales are <= 9 and |num| < 2^63·10^9, so this cannot overflow.
        let a = self.num * pow10(scale - self.scale).unwrap_or(1);
        let b = other.num * pow10(scale - other.scale).unwrap_or(1);
        a.cmp(&b)
    }
}

fn apply_pow10(num: &mut i128, scale: &mut u32, e: i32) -> Option<()> {
    if e >= 0 {
        let mut e = e.unsigned_abs();
        // Use up the fractional digits first.
        let take = e.min(*scale);
        *scale -= take;
        e -= take;
        *num = num.checked_mul(pow10(e)?)?;
        if *num >= MAX_ABS_NUM * 1_000_000 {
            return None;
        }
    } else {
        *scale = scale.checked_add(e.unsigned_abs())?;
        if *scale > 60 {
            // Far below nano: anything non-zero rounds up to 1n.
            *num = i128::from(*num != 0);
            *scale = MAX_SCALE;
        }
    }
    Some(())
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_value(other) == Ordering::Equal
    }
}
impl Eq for Quantity {}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_value(other)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// Kubernetes' canonical form: the largest suffix of the quantity's own
    /// family that keeps the number an integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut format = self.format;
        if format == QuantityFormat::BinarySi
            && (!self.is_integer() || (self.num > -1024 && self.num < 1024))
        {
            format = QuantityFormat::DecimalSi;
        }
        if self.num == 0 {
            return f.write_str("0");
        }
        match format {
            QuantityFormat::BinarySi => {
                let mut n = self.num;
                let mut k = 0usize;
                while k < 6 && n % 1024 == 0 {
                    n /= 1024;
                    k += 1;
                }
                let suffix = if k == 0 { "" } else { BINARY[k - 1].0 };
                write!(f, "{n}{suffix}")
            }
            QuantityFormat::DecimalSi | QuantityFormat::DecimalExponent => {
                // value = num · 10^-scale; find the largest exponent e (a
                // multiple of 3, from -9 to 18) with an integer mantissa.
                let mut mantissa = self.num;
                let mut exp = -(self.scale as i32);
                while mantissa % 10 == 0 && exp < 18 {
                    mantissa /= 10;
                    exp += 1;
                }
                // Round the exponent down to a multiple of three.
                let e3 = exp.div_euclid(3) * 3;
                let e3 = e3.clamp(-9, 18);
                let shift = (exp - e3) as u32;
                let m = mantissa * pow10(shift).unwrap_or(1);
                if format == QuantityFormat::DecimalExponent {
                    if e3 == 0 {
                        write!(f, "{m}")
                    } else {
                        write!(f, "{m}e{e3}")
                    }
                } else {
                    let suffix = DECIMAL
                        .iter()
                        .find(|(_, e)| *e == e3)
                        .map(|(s, _)| *s)
                        .unwrap_or("");
                    write!(f, "{m}{suffix}")
                }
            }
        }
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Kubernetes quantity such as \"64Mi\", \"1G\" or 1024")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::from_int(i128::from(v), QuantityFormat::DecimalSi))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                Ok(Quantity::from_int(i128::from(v), QuantityFormat::DecimalSi))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !v.is_finite() {
                    return Err(E::custom(format!("quantity {v} is not a finite number")));
                }
                // `{:e}` prints the shortest exact decimal of the float.
                format!("{v:e}").parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn literal_table_from_the_spec() {
        for (lit, bytes) in [
            ("64M", 64_000_000u64),
            ("64Mi", 67_108_864),
            ("1G", 1_000_000_000),
            ("1024M", 1_024_000_000),
            ("2048M", 2_048_000_000),
            ("2Gi", 2_147_483_648),
            ("500Mi", 524_288_000),
            ("128Mi", 134_217_728),
            ("100Mi", 104_857_600),
            ("1e3", 1000),
            ("1E3", 1000),
            ("1k", 1000),
            ("0.5Gi", 536_870_912),
            ("1.5Gi", 1_610_612_736),
            ("12", 12),
        ] {
            assert_eq!(q(lit).to_bytes().unwrap(), bytes, "{lit}");
        }
        assert_eq!(q("63500m").milli_value(), 63500);
        assert_eq!(q("2").milli_value(), 2000);
        assert_eq!(q("1.5").milli_value(), 1500);
    }

    #[test]
    fn cross_suffix_comparison() {
        assert!(q("1G") < q("1Gi"));
        assert!(q("2000Mi") < q("2Gi"));
        assert!(q("2097152000") < q("2Gi"));
        assert_eq!(q("1024Mi"), q("1Gi"));
        assert_eq!(q("1000M"), q("1G"));
        assert_eq!(q("1e9"), q("1G"));
        assert!(q("500m") < q("1"));
        assert!(q("-1") < q("0"));
        assert_ne!(q("1024M"), q("1024Mi"));
    }

    #[test]
    fn canonical_printing() {
        for (input, canon) in [
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1000M", "1G"),
            ("1024M", "1024M"),
            ("1.5", "1500m"),
            ("0.5Gi", "512Mi"),
            ("1e3", "1e3"),
            ("12e2", "1200"),
            ("100m", "100m"),
            ("0", "0"),
            ("1Ki", "1Ki"),
            ("1023Ki", "1023Ki"),
            ("512", "512"),
            ("-2Gi", "-2Gi"),
            ("0.1n", "1n"),
            ("2048Ki", "2Mi"),
        ] {
            assert_eq!(q(input).to_string(), canon, "{input}");
        }
    }

    #[test]
    fn bad_quantities_say_what_is_wrong() {
        assert_eq!("".parse::<Quantity>(), Err(QuantityError::Empty));
        assert!(matches!(
            "2 Gi".parse::<Quantity>(),
            Err(QuantityError::BadSuffix { suffix, .. }) if suffix == " Gi"
        ));
        assert!(matches!(
            "2GB".parse::<Quantity>(),
            Err(QuantityError::BadSuffix { suffix, .. }) if suffix == "GB"
        ));
        assert!(matches!(
            "1.5.0M".parse::<Quantity>(),
            Err(QuantityError::BadSuffix { .. })
        ));
        assert!(matches!(
            "Gi".parse::<Quantity>(),
            Err(QuantityError::BadNumber { .. })
        ));
        assert!(matches!(
            "-".parse::<Quantity>(),
            Err(QuantityError::BadNumber { .. })
        ));
        assert!(matches!(
            "1e".parse::<Quantity>(),
            Err(QuantityError::BadSuffix { .. })
        ));
        assert!(matches!(
            "99999999999999999999Ei".parse::<Quantity>(),
            Err(QuantityError::OutOfRange { .. })
        ));
        assert_eq!(q("1Ei").to_bytes().unwrap(), 1 << 60);
        assert_eq!(q("2E").to_string(), "2E");
        assert!(matches!(
            "1e400".parse::<Quantity>(),
            Err(QuantityError::OutOfRange { .. })
        ));
        assert!(matches!(
            q("-1Gi").to_bytes(),
            Err(QuantityError::Negative(_))
        ));
        let msg = "2GB".parse::<Quantity>().unwrap_err().to_string();
        assert!(msg.contains("unknown suffix \"GB\""), "{msg}");
    }

    #[test]
    fn arithmetic_and_multiples() {
        let gap = q("256Mi").checked_sub(&q("128Mi")).unwrap();
        assert_eq!(gap, q("128Mi"));
        assert_eq!(
            q("1100Mi")
                .checked_sub(&q("1G"))
                .unwrap()
                .to_bytes()
                .unwrap(),
            153_433_600
        );
        assert!(q("4Gi").is_multiple_of(&q("1Gi")));
        assert!(!q("500Mi").is_multiple_of(&q("1Gi")));
        assert!(!q("3Mi").is_multiple_of(&q("2Mi")));
        assert!(q("1.5").checked_add(&q("500m")).unwrap() == q("2"));
    }

    #[test]
    fn yaml_scalars_of_every_shape() {
        #[derive(serde::Deserialize)]
        struct S {
            a: Quantity,
            b: Quantity,
            c: Quantity,
            d: Quantity,
        }
        let s: S = serde_yaml_ng::from_str("a: 1G\nb: \"1G\"\nc: 1024\nd: 1.5\n").unwrap();
        assert_eq!(s.a, s.b);
        assert_eq!(s.c.to_bytes().unwrap(), 1024);
        assert_eq!(s.d, q("1500m"));
    }

    proptest::proptest! {
        #[test]
        fn print_parse_roundtrip(n in -1_000_000_000i64..1_000_000_000i64,
                                 suffix in proptest::sample::select(vec!["", "m", "k", "M", "G", "Ki", "Mi", "Gi", "e3", "e-3", "n", "u"])) {
            let text = format!("{n}{suffix}");
            let a: Quantity = text.parse().unwrap();
            let b: Quantity = a.to_string().parse().unwrap();
            proptest::prop_assert_eq!(a, b);
            proptest::prop_assert_eq!(a.to_string(), b.to_string());
        }
    }
}
