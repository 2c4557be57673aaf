//! Name-value lists (`nvlist_t`) in their XDR encoding (`NV_ENCODE_XDR`).
//!
//! Vdev labels, the MOS config object and many ZFS properties are packed
//! nvlists. On disk they always use the XDR encoding, which is big-endian
//! whatever host wrote it; the stream header only records the writer's byte
//! order for information.
//!
//! The layout (module/nvpair/nvpair.c, comment above `nvs_xdr_create` and
//! `nvs_xdr_nvp_op`):
//!
//! ```text
//! stream header   nvs_header_t: encoding (1 = XDR), host endian (1 = little), 2 reserved bytes
//! nvlist          nvl_version (i32, NV_VERSION = 0), nvl_nvflag (u32)
//!   nvpair*       encoded size (i32), decoded size (i32), name (XDR string),
//!                 data type (i32, data_type_t), element count (i32), data
//!   end           two zero i32 (decoded size 0 ends the list)
//! ```
//!
//! XDR (RFC 4506) pads everything to four bytes: an `xdr_char` or
//! `xdr_short` takes a whole 32-bit word; strings and opaque data are padded.
//!
//! The decoder (`NvList::unpack`) needs `alloc`; [`DataType`] does not.
//! Decoding never panics and is bounded: every count is checked against the
//! bytes that remain before anything is allocated, so memory is linear in the
//! input, and nesting stops at [`MAX_DEPTH`].

use crate::{Error, Result};

/// Deepest nesting of nvlists the decoder accepts.
///
/// Labels nest three levels deep (config → `vdev_tree` → `children[]`, plus
/// one per level of a nested vdev tree); libnvpair itself limits recursion
/// (`nvpair_max_recursion` in nvpair.c). Ours is a fixed 64 so a kernel stack
/// stays bounded.
pub const MAX_DEPTH: usize = 64;

/// `NV_ENCODE_NATIVE` (include/sys/nvpair.h).
pub const NV_ENCODE_NATIVE: u8 = 0;
/// `NV_ENCODE_XDR` (include/sys/nvpair.h).
pub const NV_ENCODE_XDR: u8 = 1;
/// `NV_VERSION` (include/sys/nvpair.h).
pub const NV_VERSION: i32 = 0;
/// `NV_UNIQUE_NAME` flag of `nvl_nvflag` (include/sys/nvpair.h).
pub const NV_UNIQUE_NAME: u32 = 0x1;
/// `NV_UNIQUE_NAME_TYPE` flag of `nvl_nvflag` (include/sys/nvpair.h).
pub const NV_UNIQUE_NAME_TYPE: u32 = 0x2;

/// The type of an nvpair: `data_type_t` in include/sys/nvpair.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the variant names are the C names
pub enum DataType {
    Boolean = 1,
    Byte = 2,
    Int16 = 3,
    Uint16 = 4,
    Int32 = 5,
    Uint32 = 6,
    Int64 = 7,
    Uint64 = 8,
    String = 9,
    ByteArray = 10,
    Int16Array = 11,
    Uint16Array = 12,
    Int32Array = 13,
    Uint32Array = 14,
    Int64Array = 15,
    Uint64Array = 16,
    StringArray = 17,
    Hrtime = 18,
    NvList = 19,
    NvListArray = 20,
    BooleanValue = 21,
    Int8 = 22,
    Uint8 = 23,
    BooleanArray = 24,
    Int8Array = 25,
    Uint8Array = 26,
    Double = 27,
}

impl DataType {
    /// Converts the on-disk `data_type_t`; `DATA_TYPE_UNKNOWN` (0),
    /// `DATA_TYPE_DONTCARE` (-1) and anything else unknown is an error.
    pub fn from_raw(raw: i32) -> Result<DataType> {
        use DataType::*;
        Ok(match raw {
            1 => Boolean,
            2 => Byte,
            3 => Int16,
            4 => Uint16,
            5 => Int32,
            6 => Uint32,
            7 => Int64,
            8 => Uint64,
            9 => String,
            10 => ByteArray,
            11 => Int16Array,
            12 => Uint16Array,
            13 => Int32Array,
            14 => Uint32Array,
            15 => Int64Array,
            16 => Uint64Array,
            17 => StringArray,
            18 => Hrtime,
            19 => NvList,
            20 => NvListArray,
            21 => BooleanValue,
            22 => Int8,
            23 => Uint8,
            24 => BooleanArray,
            25 => Int8Array,
            26 => Uint8Array,
            27 => Double,
            other => return Err(Error::UnknownDataType(other)),
        })
    }

    /// Whether values of this type hold any number of elements.
    pub fn is_array(self) -> bool {
        use DataType::*;
        matches!(
            self,
            ByteArray
                | Int16Array
                | Uint16Array
                | Int32Array
                | Uint32Array
                | Int64Array
                | Uint64Array
                | StringArray
                | NvListArray
                | BooleanArray
                | Int8Array
                | Uint8Array
        )
    }

    /// Checks an element count against the type, as `i_validate_type_nelem`
    /// in nvpair.c: a `BOOLEAN` has none, a scalar exactly one, an array any.
    pub fn check_nelem(self, nelem: u32) -> Result {
        let ok = match self {
            DataType::Boolean => nelem == 0,
            t if t.is_array() => true,
            _ => nelem == 1,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::BadElementCount)
        }
    }
}

/// Reads the stream header (`nvs_header_t`, nvpair.c) of a packed nvlist and
/// returns the byte order of the host that packed it.
///
/// Only the XDR encoding is accepted: labels and the MOS config always use
/// it (`vdev_label_init`/`vdev_config_sync` in vdev_label.c pack with
/// `NV_ENCODE_XDR`).
pub fn packed_endian(buf: &[u8]) -> Result<crate::Endian> {
    let header: [u8; 4] = crate::bytes::array(buf, 0)?;
    match header[0] {
        NV_ENCODE_XDR => {}
        NV_ENCODE_NATIVE => return Err(Error::UnsupportedNvEncoding(NV_ENCODE_NATIVE)),
        other => return Err(Error::UnknownNvEncoding(other)),
    }
    // nvh_endian: 1 on little-endian hosts, 0 on big-endian (nvpair.c,
    // `host_endian`).
    Ok(if header[1] == 0 { crate::Endian::Big } else { crate::Endian::Little })
}

#[cfg(feature = "alloc")]
pub use self::heap::*;

#[cfg(feature = "alloc")]
mod heap {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::fmt;

    /// A decoded nvlist: the pairs in stream order.
    ///
    /// Names are not required to be unique (the lookup helpers return the
    /// first match); real labels carry `NV_UNIQUE_NAME` and never repeat one.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct NvList {
        /// `nvl_nvflag`: [`NV_UNIQUE_NAME`], [`NV_UNIQUE_NAME_TYPE`].
        pub flags: u32,
        /// The pairs, in the order they were packed.
        pub pairs: Vec<(String, NvValue)>,
    }

    /// The value of one nvpair; one variant per `data_type_t`.
    #[derive(Debug, Clone, PartialEq)]
    #[allow(missing_docs)] // each variant is its data_type_t
    pub enum NvValue {
        /// `DATA_TYPE_BOOLEAN`: a flag whose presence is its value.
        Boolean,
        BooleanValue(bool),
        Byte(u8),
        Int8(i8),
        Uint8(u8),
        Int16(i16),
        Uint16(u16),
        Int32(i32),
        Uint32(u32),
        Int64(i64),
        Uint64(u64),
        /// `DATA_TYPE_HRTIME`: nanoseconds, signed.
        Hrtime(i64),
        Double(f64),
        String(String),
        ByteArray(Vec<u8>),
        Int8Array(Vec<i8>),
        Uint8Array(Vec<u8>),
        Int16Array(Vec<i16>),
        Uint16Array(Vec<u16>),
        Int32Array(Vec<i32>),
        Uint32Array(Vec<u32>),
        Int64Array(Vec<i64>),
        Uint64Array(Vec<u64>),
        BooleanArray(Vec<bool>),
        StringArray(Vec<String>),
        NvList(NvList),
        NvListArray(Vec<NvList>),
    }

    impl NvValue {
        /// The value's `data_type_t`.
        pub fn data_type(&self) -> DataType {
            use NvValue as V;
            match self {
                V::Boolean => DataType::Boolean,
                V::BooleanValue(_) => DataType::BooleanValue,
                V::Byte(_) => DataType::Byte,
                V::Int8(_) => DataType::Int8,
                V::Uint8(_) => DataType::Uint8,
                V::Int16(_) => DataType::Int16,
                V::Uint16(_) => DataType::Uint16,
                V::Int32(_) => DataType::Int32,
                V::Uint32(_) => DataType::Uint32,
                V::Int64(_) => DataType::Int64,
                V::Uint64(_) => DataType::Uint64,
                V::Hrtime(_) => DataType::Hrtime,
                V::Double(_) => DataType::Double,
                V::String(_) => DataType::String,
                V::ByteArray(_) => DataType::ByteArray,
                V::Int8Array(_) => DataType::Int8Array,
                V::Uint8Array(_) => DataType::Uint8Array,
                V::Int16Array(_) => DataType::Int16Array,
                V::Uint16Array(_) => DataType::Uint16Array,
                V::Int32Array(_) => DataType::Int32Array,
                V::Uint32Array(_) => DataType::Uint32Array,
                V::Int64Array(_) => DataType::Int64Array,
                V::Uint64Array(_) => DataType::Uint64Array,
                V::BooleanArray(_) => DataType::BooleanArray,
                V::StringArray(_) => DataType::StringArray,
                V::NvList(_) => DataType::NvList,
                V::NvListArray(_) => DataType::NvListArray,
            }
        }

        /// Number of elements, as `nvp_value_elem`.
        pub fn nelem(&self) -> usize {
            use NvValue as V;
            match self {
                V::Boolean => 0,
                V::ByteArray(v) | V::Uint8Array(v) => v.len(),
                V::Int8Array(v) => v.len(),
                V::Int16Array(v) => v.len(),
                V::Uint16Array(v) => v.len(),
                V::Int32Array(v) => v.len(),
                V::Uint32Array(v) => v.len(),
                V::Int64Array(v) => v.len(),
                V::Uint64Array(v) => v.len(),
                V::BooleanArray(v) => v.len(),
                V::StringArray(v) => v.len(),
                V::NvListArray(v) => v.len(),
                _ => 1,
            }
        }
    }

    impl NvList {
        /// An empty list with `NV_UNIQUE_NAME` set, as `nvlist_alloc` in the
        /// label code creates it.
        pub fn new() -> NvList {
            NvList { flags: NV_UNIQUE_NAME, pairs: Vec::new() }
        }

        /// Appends a pair (builder style).
        pub fn with(mut self, name: &str, value: NvValue) -> NvList {
            self.pairs.push((String::from(name), value));
            self
        }

        /// The first value named `name`.
        pub fn get(&self, name: &str) -> Option<&NvValue> {
            self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
        }

        /// The `uint64` named `name`.
        pub fn get_u64(&self, name: &str) -> Option<u64> {
            match self.get(name)? {
                NvValue::Uint64(v) => Some(*v),
                _ => None,
            }
        }

        /// The string named `name`.
        pub fn get_str(&self, name: &str) -> Option<&str> {
            match self.get(name)? {
                NvValue::String(v) => Some(v),
                _ => None,
            }
        }

        /// The nested nvlist named `name`.
        pub fn get_nvlist(&self, name: &str) -> Option<&NvList> {
            match self.get(name)? {
                NvValue::NvList(v) => Some(v),
                _ => None,
            }
        }

        /// The nvlist array named `name`.
        pub fn get_nvlist_array(&self, name: &str) -> Option<&[NvList]> {
            match self.get(name)? {
                NvValue::NvListArray(v) => Some(v),
                _ => None,
            }
        }

        /// The `uint64` array named `name`.
        pub fn get_u64_array(&self, name: &str) -> Option<&[u64]> {
            match self.get(name)? {
                NvValue::Uint64Array(v) => Some(v),
                _ => None,
            }
        }

        /// Whether a pair named `name` exists (any type).
        pub fn contains(&self, name: &str) -> bool {
            self.get(name).is_some()
        }

        /// Decodes a packed nvlist: the `nvs_header_t` and an XDR stream
        /// (`nvlist_unpack` in nvpair.c). Bytes after the end of the list
        /// are ignored, as in a label's 112 KiB `vp_nvlist`.
        pub fn unpack(buf: &[u8]) -> Result<NvList> {
            packed_endian(buf)?;
            let mut x = Xdr { buf: buf.get(4..).ok_or(Error::Truncated)?, pos: 0 };
            decode_list(&mut x, 0)
        }

        /// Packs the list with the XDR encoding, as `nvlist_pack(...,
        /// NV_ENCODE_XDR)` would; `host` goes into the stream header.
        pub fn pack(&self, host: crate::Endian) -> Result<Vec<u8>> {
            let mut out = Vec::new();
            out.extend_from_slice(&[NV_ENCODE_XDR, (host == crate::Endian::Little) as u8, 0, 0]);
            encode_list(self, &mut out, 0)?;
            Ok(out)
        }

        /// Writes the list the way `zdb -l` prints it (`dump_nvlist` in
        /// lib/libnvpair/libnvpair.c): one pair a line, nested lists
        /// indented four more spaces, arrays one element a line as
        /// `name[i]: value`.
        pub fn write_zdb<W: fmt::Write>(&self, w: &mut W, indent: usize) -> fmt::Result {
            for (name, value) in &self.pairs {
                write_pair(w, indent, name, value)?;
            }
            Ok(())
        }
    }

    fn write_pair<W: fmt::Write>(w: &mut W, ind: usize, name: &str, value: &NvValue) -> fmt::Result {
        use NvValue as V;
        fn each<W: fmt::Write, T>(
            w: &mut W,
            ind: usize,
            name: &str,
            items: &[T],
            f: impl Fn(&mut W, &T) -> fmt::Result,
        ) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                write!(w, "{:ind$}{name}[{i}]: ", "")?;
                f(w, item)?;
                w.write_char('\n')?;
            }
            Ok(())
        }
        let tf = |b: bool| if b { "true" } else { "false" };
        match value {
            V::Boolean => writeln!(w, "{:ind$}{name}", ""),
            V::BooleanValue(b) => writeln!(w, "{:ind$}{name}: {}", "", tf(*b)),
            V::Byte(v) | V::Uint8(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Int8(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Int16(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Uint16(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Int32(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Uint32(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Int64(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::Uint64(v) => writeln!(w, "{:ind$}{name}: {v}", ""),
            V::String(s) => writeln!(w, "{:ind$}{name}: '{s}'", ""),
            V::BooleanArray(a) => each(w, ind, name, a, |w, b| w.write_str(tf(*b))),
            V::ByteArray(a) | V::Uint8Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Int8Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Int16Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Uint16Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Int32Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Uint32Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Int64Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::Uint64Array(a) => each(w, ind, name, a, |w, v| write!(w, "{v}")),
            V::StringArray(a) => each(w, ind, name, a, |w, v| write!(w, "'{v}'")),
            V::NvList(l) => {
                writeln!(w, "{:ind$}{name}:", "")?;
                l.write_zdb(w, ind + 4)
            }
            V::NvListArray(ls) => {
                for (i, l) in ls.iter().enumerate() {
                    writeln!(w, "{:ind$}{name}[{i}]:", "")?;
                    l.write_zdb(w, ind + 4)?;
                }
                Ok(())
            }
            // dump_nvlist has no case for these two.
            V::Hrtime(_) | V::Double(_) => {
                writeln!(w, "bad config type {} for {name}", value.data_type() as i32)
            }
        }
    }

    impl fmt::Display for NvList {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            self.write_zdb(f, 0)
        }
    }

    /// A cursor over an XDR stream; every read is checked.
    struct Xdr<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Xdr<'a> {
        fn remaining(&self) -> usize {
            self.buf.len().saturating_sub(self.pos)
        }

        fn take(&mut self, len: usize) -> Result<&'a [u8]> {
            let end = self.pos.checked_add(len).ok_or(Error::Truncated)?;
            let bytes = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
            self.pos = end;
            Ok(bytes)
        }

        fn word(&mut self) -> Result<[u8; 4]> {
            let b = self.take(4)?;
            Ok([b[0], b[1], b[2], b[3]])
        }

        fn u32(&mut self) -> Result<u32> {
            Ok(u32::from_be_bytes(self.word()?))
        }

        fn i32(&mut self) -> Result<i32> {
            Ok(i32::from_be_bytes(self.word()?))
        }

        fn u64(&mut self) -> Result<u64> {
            let hi = self.u32()? as u64;
            let lo = self.u32()? as u64;
            Ok(hi << 32 | lo)
        }

        /// `xdr_opaque`: `len` bytes, padded to a multiple of four.
        fn opaque(&mut self, len: usize) -> Result<&'a [u8]> {
            let padded = len.checked_add(3).ok_or(Error::BadLength)? & !3;
            if padded > self.remaining() {
                return Err(Error::BadLength);
            }
            let bytes = self.take(padded)?;
            bytes.get(..len).ok_or(Error::Truncated)
        }

        /// `xdr_string`: a length word, then the bytes, padded.
        fn string(&mut self) -> Result<String> {
            let len = self.u32()? as usize;
            let bytes = self.opaque(len)?;
            if bytes.contains(&0) {
                return Err(Error::BadString);
            }
            core::str::from_utf8(bytes).map(String::from).map_err(|_| Error::BadString)
        }

        /// The element count word of an `xdr_array`, which must repeat the
        /// nvpair's `nelem`; `size` is the encoded size of one element.
        fn array_count(&mut self, nelem: u32, size: usize) -> Result<usize> {
            let count = self.u32()?;
            if count != nelem {
                return Err(Error::BadElementCount);
            }
            let count = count as usize;
            if count.checked_mul(size).ok_or(Error::BadLength)? > self.remaining() {
                return Err(Error::BadLength);
            }
            Ok(count)
        }
    }

    fn bool_from(v: i32) -> Result<bool> {
        // B_FALSE / B_TRUE, checked as i_validate_nvpair_value (nvpair.c).
        match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::BadBoolean),
        }
    }

    fn decode_list(x: &mut Xdr<'_>, depth: usize) -> Result<NvList> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        // nvs_xdr_nvlist: nvl_version, nvl_nvflag.
        let version = x.i32()?;
        if version != NV_VERSION {
            return Err(Error::UnsupportedNvVersion(version));
        }
        let flags = x.u32()?;
        let mut pairs = Vec::new();
        loop {
            // nvs_xdr_nvpair: encoded and decoded size; a decoded size of
            // zero is the end of the list.
            let encoded = x.i32()?;
            let decoded = x.i32()?;
            if decoded == 0 {
                break;
            }
            if encoded < 0 || decoded < 0 {
                return Err(Error::BadLength);
            }
            // nvs_xdr_nvp_op: name, type, nelem, data.
            let name = x.string()?;
            let ty = DataType::from_raw(x.i32()?)?;
            let nelem = x.i32()?;
            let nelem = u32::try_from(nelem).map_err(|_| Error::BadElementCount)?;
            ty.check_nelem(nelem)?;
            let value = decode_value(x, ty, nelem, depth)?;
            pairs.push((name, value));
        }
        Ok(NvList { flags, pairs })
    }

    fn decode_value(x: &mut Xdr<'_>, ty: DataType, nelem: u32, depth: usize) -> Result<NvValue> {
        use NvValue as V;
        // nvs_xdr_nvp_op returns before reading any data when nelem is 0:
        // an empty array has no count word.
        if nelem == 0 {
            return Ok(match ty {
                DataType::Boolean => V::Boolean,
                DataType::ByteArray => V::ByteArray(Vec::new()),
                DataType::Int8Array => V::Int8Array(Vec::new()),
                DataType::Uint8Array => V::Uint8Array(Vec::new()),
                DataType::Int16Array => V::Int16Array(Vec::new()),
                DataType::Uint16Array => V::Uint16Array(Vec::new()),
                DataType::Int32Array => V::Int32Array(Vec::new()),
                DataType::Uint32Array => V::Uint32Array(Vec::new()),
                DataType::Int64Array => V::Int64Array(Vec::new()),
                DataType::Uint64Array => V::Uint64Array(Vec::new()),
                DataType::BooleanArray => V::BooleanArray(Vec::new()),
                DataType::StringArray => V::StringArray(Vec::new()),
                DataType::NvListArray => V::NvListArray(Vec::new()),
                _ => return Err(Error::BadElementCount),
            });
        }
        // Collects `count` array elements decoded by `f`; the count was
        // checked against the remaining bytes, so the allocation is bounded.
        fn collect<T>(
            x: &mut Xdr<'_>,
            nelem: u32,
            size: usize,
            f: impl Fn(&mut Xdr<'_>) -> Result<T>,
        ) -> Result<Vec<T>> {
            let count = x.array_count(nelem, size)?;
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(f(x)?);
            }
            Ok(out)
        }
        // xdr_char and xdr_short carry their value in a 32-bit word; the
        // decoder keeps the low bits, as the C casts do.
        Ok(match ty {
            DataType::Boolean => return Err(Error::BadElementCount),
            DataType::BooleanValue => V::BooleanValue(bool_from(x.i32()?)?),
            DataType::Byte => V::Byte(x.i32()? as u8),
            DataType::Int8 => V::Int8(x.i32()? as i8),
            DataType::Uint8 => V::Uint8(x.i32()? as u8),
            DataType::Int16 => V::Int16(x.i32()? as i16),
            DataType::Uint16 => V::Uint16(x.i32()? as u16),
            DataType::Int32 => V::Int32(x.i32()?),
            DataType::Uint32 => V::Uint32(x.u32()?),
            DataType::Int64 => V::Int64(x.u64()? as i64),
            DataType::Uint64 => V::Uint64(x.u64()?),
            DataType::Hrtime => V::Hrtime(x.u64()? as i64),
            // xdr_double: the IEEE 754 bits as a big-endian hyper.
            DataType::Double => V::Double(f64::from_bits(x.u64()?)),
            DataType::String => V::String(x.string()?),
            // xdr_opaque: raw bytes, no count word.
            DataType::ByteArray => V::ByteArray(x.opaque(nelem as usize)?.to_vec()),
            DataType::Int8Array => V::Int8Array(collect(x, nelem, 4, |x| Ok(x.i32()? as i8))?),
            DataType::Uint8Array => V::Uint8Array(collect(x, nelem, 4, |x| Ok(x.i32()? as u8))?),
            DataType::Int16Array => V::Int16Array(collect(x, nelem, 4, |x| Ok(x.i32()? as i16))?),
            DataType::Uint16Array => V::Uint16Array(collect(x, nelem, 4, |x| Ok(x.i32()? as u16))?),
            DataType::Int32Array => V::Int32Array(collect(x, nelem, 4, |x| x.i32())?),
            DataType::Uint32Array => V::Uint32Array(collect(x, nelem, 4, |x| x.u32())?),
            DataType::BooleanArray => V::BooleanArray(collect(x, nelem, 4, |x| bool_from(x.i32()?))?),
            DataType::Int64Array => V::Int64Array(collect(x, nelem, 8, |x| Ok(x.u64()? as i64))?),
            DataType::Uint64Array => V::Uint64Array(collect(x, nelem, 8, |x| x.u64())?),
            DataType::StringArray => {
                // nelem xdr_strings, no count word; each takes 4 bytes or more.
                let count = nelem as usize;
                if count.checked_mul(4).ok_or(Error::BadLength)? > x.remaining() {
                    return Err(Error::BadLength);
                }
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    out.push(x.string()?);
                }
                V::StringArray(out)
            }
            DataType::NvList => V::NvList(decode_list(x, depth + 1)?),
            DataType::NvListArray => {
                // nvs_embedded_nvl_array: nelem embedded lists back to back;
                // each takes at least 16 bytes (version, flags, end marker).
                let count = nelem as usize;
                if count.checked_mul(16).ok_or(Error::BadLength)? > x.remaining() {
                    return Err(Error::BadLength);
                }
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    out.push(decode_list(x, depth + 1)?);
                }
                V::NvListArray(out)
            }
        })
    }

    // ---- encoding -------------------------------------------------------

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    fn align8(n: usize) -> usize {
        (n + 7) & !7
    }

    /// Size of one pair in the XDR stream (`nvs_xdr_nvp_size`, nvpair.c).
    /// This is what goes into the "encoded size" word; note that it counts
    /// a count word for empty arrays although none is written.
    fn xdr_pair_size(name: &str, value: &NvValue) -> usize {
        use NvValue as V;
        let head = 4 + 4 + 4 + align4(name.len()) + 4 + 4;
        let n = value.nelem();
        head + match value {
            V::Boolean => 0,
            V::BooleanValue(_)
            | V::Byte(_)
            | V::Int8(_)
            | V::Uint8(_)
            | V::Int16(_)
            | V::Uint16(_)
            | V::Int32(_)
            | V::Uint32(_) => 4,
            V::Int64(_) | V::Uint64(_) | V::Hrtime(_) | V::Double(_) => 8,
            V::String(s) => 4 + align4(s.len()),
            V::ByteArray(_) => align4(n),
            V::BooleanArray(_)
            | V::Int8Array(_)
            | V::Uint8Array(_)
            | V::Int16Array(_)
            | V::Uint16Array(_)
            | V::Int32Array(_)
            | V::Uint32Array(_) => 4 + 4 * n,
            V::Int64Array(_) | V::Uint64Array(_) => 4 + 8 * n,
            V::StringArray(a) => a.iter().map(|s| 4 + align4(s.len())).sum(),
            V::NvList(l) => xdr_list_size(l),
            V::NvListArray(ls) => ls.iter().map(xdr_list_size).sum(),
        }
    }

    /// `nvs_xdr_nvlist` in `NVS_OP_GETSIZE`: version, flags, end marker,
    /// plus the pairs.
    fn xdr_list_size(list: &NvList) -> usize {
        16 + list.pairs.iter().map(|(n, v)| xdr_pair_size(n, v)).sum::<usize>()
    }

    /// Size of the pair in memory (`nvp_size`), which the stream records as
    /// its "decoded size": `NVP_SIZE_CALC(name_sz, value_sz)` with the value
    /// size of `i_get_value_size` (nvpair.c; `nvpair_t` is 16 bytes,
    /// `nvlist_t` 24, pointers 8, `boolean_t` 4).
    fn native_pair_size(name: &str, value: &NvValue) -> usize {
        use NvValue as V;
        let n = value.nelem();
        let value_sz = match value {
            V::Boolean => 0,
            V::BooleanValue(_) => 4,
            V::Byte(_) | V::Int8(_) | V::Uint8(_) => 1,
            V::Int16(_) | V::Uint16(_) => 2,
            V::Int32(_) | V::Uint32(_) => 4,
            V::Int64(_) | V::Uint64(_) | V::Hrtime(_) | V::Double(_) => 8,
            V::String(s) => s.len() + 1,
            V::ByteArray(_) | V::Int8Array(_) | V::Uint8Array(_) => n,
            V::Int16Array(_) | V::Uint16Array(_) => 2 * n,
            V::Int32Array(_) | V::Uint32Array(_) | V::BooleanArray(_) => 4 * n,
            V::Int64Array(_) | V::Uint64Array(_) => 8 * n,
            V::StringArray(a) => 8 * n + a.iter().map(|s| s.len() + 1).sum::<usize>(),
            V::NvList(_) => 24,
            V::NvListArray(_) => 8 * n + 24 * n,
        };
        align8(16 + name.len() + 1) + align8(value_sz)
    }

    fn put_i32(out: &mut Vec<u8>, v: i32) {
        out.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_be_bytes());
    }

    fn put_len(out: &mut Vec<u8>, n: usize) -> Result {
        put_i32(out, i32::try_from(n).map_err(|_| Error::TooLarge)?);
        Ok(())
    }

    fn put_opaque(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(bytes);
        out.resize(out.len() + (align4(bytes.len()) - bytes.len()), 0);
    }

    fn put_string(out: &mut Vec<u8>, s: &str) -> Result {
        if s.as_bytes().contains(&0) {
            return Err(Error::BadString);
        }
        put_len(out, s.len())?;
        put_opaque(out, s.as_bytes());
        Ok(())
    }

    fn encode_list(list: &NvList, out: &mut Vec<u8>, depth: usize) -> Result {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        put_i32(out, NV_VERSION);
        out.extend_from_slice(&list.flags.to_be_bytes());
        for (name, value) in &list.pairs {
            encode_pair(name, value, out, depth)?;
        }
        // nvs_xdr_nvl_fini: two zero words end the list.
        put_i32(out, 0);
        put_i32(out, 0);
        Ok(())
    }

    fn encode_pair(name: &str, value: &NvValue, out: &mut Vec<u8>, depth: usize) -> Result {
        use NvValue as V;
        put_len(out, xdr_pair_size(name, value))?;
        put_len(out, native_pair_size(name, value))?;
        put_string(out, name)?;
        put_i32(out, value.data_type() as i32);
        let n = value.nelem();
        put_len(out, n)?;
        if n == 0 {
            return Ok(());
        }
        // An xdr_array: the count word, then each element.
        fn array<T: Copy>(out: &mut Vec<u8>, items: &[T], f: impl Fn(&mut Vec<u8>, T)) -> Result {
            put_len(out, items.len())?;
            for &item in items {
                f(out, item);
            }
            Ok(())
        }
        match value {
            V::Boolean => {}
            V::BooleanValue(b) => put_i32(out, *b as i32),
            // xdr_char sign-extends the C `char` (signed on the hosts ZFS
            // runs on), so bytes above 127 become negative words.
            V::Byte(v) | V::Uint8(v) => put_i32(out, *v as i8 as i32),
            V::Int8(v) => put_i32(out, *v as i32),
            V::Int16(v) => put_i32(out, *v as i32),
            V::Uint16(v) => put_i32(out, *v as i32),
            V::Int32(v) => put_i32(out, *v),
            V::Uint32(v) => out.extend_from_slice(&v.to_be_bytes()),
            V::Int64(v) | V::Hrtime(v) => put_u64(out, *v as u64),
            V::Uint64(v) => put_u64(out, *v),
            V::Double(v) => put_u64(out, v.to_bits()),
            V::String(s) => put_string(out, s)?,
            V::ByteArray(a) => put_opaque(out, a),
            V::Int8Array(a) => array(out, a, |o, v| put_i32(o, v as i32))?,
            V::Uint8Array(a) => array(out, a, |o, v| put_i32(o, v as i8 as i32))?,
            V::Int16Array(a) => array(out, a, |o, v| put_i32(o, v as i32))?,
            V::Uint16Array(a) => array(out, a, |o, v| put_i32(o, v as i32))?,
            V::Int32Array(a) => array(out, a, put_i32)?,
            V::Uint32Array(a) => array(out, a, |o, v| o.extend_from_slice(&v.to_be_bytes()))?,
            V::BooleanArray(a) => array(out, a, |o, v| put_i32(o, v as i32))?,
            V::Int64Array(a) => array(out, a, |o, v| put_u64(o, v as u64))?,
            V::Uint64Array(a) => array(out, a, put_u64)?,
            V::StringArray(a) => {
                for s in a {
                    put_string(out, s)?;
                }
            }
            V::NvList(l) => encode_list(l, out, depth + 1)?,
            V::NvListArray(ls) => {
                for l in ls {
                    encode_list(l, out, depth + 1)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::Endian;
    use alloc::string::{String, ToString};
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A hand-packed list, word by word, as libnvpair writes it:
    /// `{ "txg": uint64 7, "name": "p" }`.
    fn fixture() -> Vec<u8> {
        let words: &[u32] = &[
            // nvs_header_t: XDR, little-endian host, reserved.
            0x0101_0000,
            // nvl_version, nvl_nvflag (NV_UNIQUE_NAME).
            0,
            1,
            // pair "txg": encoded size 4+4+4+4+4+4+8 = 32, decoded size
            // NV_ALIGN(16 + 4) + 8 = 32.
            32,
            32,
            3,
            u32::from_be_bytes(*b"txg\0"),
            8, // DATA_TYPE_UINT64
            1,
            0,
            7,
            // pair "name": encoded 4+4+4+4+4+4+4+4 = 32, decoded
            // NV_ALIGN(16 + 5) + NV_ALIGN(2) = 24 + 8 = 32.
            32,
            32,
            4,
            u32::from_be_bytes(*b"name"),
            9, // DATA_TYPE_STRING
            1,
            1,
            u32::from_be_bytes(*b"p\0\0\0"),
            // end of list
            0,
            0,
        ];
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn decodes_hand_built_fixture() {
        let buf = fixture();
        let list = NvList::unpack(&buf).unwrap();
        assert_eq!(list.flags, NV_UNIQUE_NAME);
        assert_eq!(list.get_u64("txg"), Some(7));
        assert_eq!(list.get_str("name"), Some("p"));
        assert_eq!(list.get_str("txg"), None);
        assert_eq!(packed_endian(&buf), Ok(Endian::Little));
        // And our encoder writes exactly the same bytes, sizes included.
        assert_eq!(list.pack(Endian::Little).unwrap(), buf);
    }

    #[test]
    fn header_endian_does_not_change_the_xdr_body() {
        let mut buf = fixture();
        buf[1] = 0; // packed on a big-endian host
        assert_eq!(packed_endian(&buf), Ok(Endian::Big));
        let list = NvList::unpack(&buf).unwrap();
        assert_eq!(list.get_u64("txg"), Some(7));
        assert_eq!(list.pack(Endian::Big).unwrap(), buf);
    }

    #[test]
    fn rejects_bad_headers_and_types() {
        let mut buf = fixture();
        buf[0] = 0;
        assert_eq!(NvList::unpack(&buf), Err(Error::UnsupportedNvEncoding(0)));
        buf[0] = 7;
        assert_eq!(NvList::unpack(&buf), Err(Error::UnknownNvEncoding(7)));
        let mut buf = fixture();
        buf[4 + 8 + 8 + 8 + 3] = 99; // type of "txg"
        assert_eq!(NvList::unpack(&buf), Err(Error::UnknownDataType(99)));
        let mut buf = fixture();
        buf[4 + 8 + 8 + 8 + 4 + 3] = 2; // nelem of a scalar
        assert_eq!(NvList::unpack(&buf), Err(Error::BadElementCount));
        let buf = fixture();
        for cut in 0..buf.len() - 1 {
            assert!(NvList::unpack(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn depth_is_limited() {
        let mut list = NvList::new();
        for _ in 0..MAX_DEPTH + 2 {
            list = NvList::new().with("n", NvValue::NvList(list));
        }
        assert_eq!(list.pack(Endian::Little), Err(Error::TooDeep));
        // Build the stream by hand: MAX_DEPTH + 1 nested lists.
        let mut body = Vec::new();
        for _ in 0..=MAX_DEPTH {
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
            body.extend_from_slice(&[0, 0, 0, 40, 0, 0, 0, 40, 0, 0, 0, 1]);
            body.extend_from_slice(b"n\0\0\0");
            body.extend_from_slice(&[0, 0, 0, 19, 0, 0, 0, 1]);
        }
        let mut buf = vec![1, 1, 0, 0];
        buf.extend_from_slice(&body);
        buf.resize(buf.len() + 16 * (MAX_DEPTH + 2), 0);
        assert_eq!(NvList::unpack(&buf), Err(Error::TooDeep));
    }

    #[test]
    fn every_type_round_trips_and_prints_like_zdb() {
        let child = NvList::new().with("guid", NvValue::Uint64(5));
        let list = NvList::new()
            .with("flag", NvValue::Boolean)
            .with("bv", NvValue::BooleanValue(true))
            .with("byte", NvValue::Byte(200))
            .with("i8", NvValue::Int8(-3))
            .with("u8", NvValue::Uint8(255))
            .with("i16", NvValue::Int16(-300))
            .with("u16", NvValue::Uint16(65000))
            .with("i32", NvValue::Int32(-70000))
            .with("u32", NvValue::Uint32(4_000_000_000))
            .with("i64", NvValue::Int64(-1))
            .with("u64", NvValue::Uint64(u64::MAX))
            .with("hr", NvValue::Hrtime(12))
            .with("d", NvValue::Double(1.5))
            .with("s", NvValue::String("héllo".to_string()))
            .with("ba", NvValue::ByteArray(vec![1, 2, 3]))
            .with("i8a", NvValue::Int8Array(vec![-1, 1]))
            .with("u8a", NvValue::Uint8Array(vec![250]))
            .with("i16a", NvValue::Int16Array(vec![-2]))
            .with("u16a", NvValue::Uint16Array(vec![60000]))
            .with("i32a", NvValue::Int32Array(vec![-5, 5]))
            .with("u32a", NvValue::Uint32Array(vec![]))
            .with("i64a", NvValue::Int64Array(vec![i64::MIN]))
            .with("u64a", NvValue::Uint64Array(vec![1, 2]))
            .with("boola", NvValue::BooleanArray(vec![true, false]))
            .with("sa", NvValue::StringArray(vec!["a".into(), String::new()]))
            .with("nv", NvValue::NvList(child.clone()))
            .with("nva", NvValue::NvListArray(vec![child.clone(), child]));
        let packed = list.pack(Endian::Little).unwrap();
        assert_eq!(NvList::unpack(&packed).unwrap(), list);
        let text = list.to_string();
        assert!(text.contains("flag\nbv: true\nbyte: 200\ni8: -3\n"));
        assert!(text.contains("u64: 18446744073709551615\n"));
        assert!(text.contains("s: 'héllo'\n"));
        assert!(text.contains("u64a[0]: 1\nu64a[1]: 2\n"));
        assert!(text.contains("nv:\n    guid: 5\nnva[0]:\n    guid: 5\nnva[1]:\n"));
        assert!(text.contains("bad config type 18 for hr\n"));
    }

    fn arb_string() -> impl Strategy<Value = String> {
        "[a-z_.:/ ]{0,12}"
    }

    fn arb_scalar() -> impl Strategy<Value = NvValue> {
        prop_oneof![
            Just(NvValue::Boolean),
            any::<bool>().prop_map(NvValue::BooleanValue),
            any::<u8>().prop_map(NvValue::Byte),
            any::<i8>().prop_map(NvValue::Int8),
            any::<u8>().prop_map(NvValue::Uint8),
            any::<i16>().prop_map(NvValue::Int16),
            any::<u16>().prop_map(NvValue::Uint16),
            any::<i32>().prop_map(NvValue::Int32),
            any::<u32>().prop_map(NvValue::Uint32),
            any::<i64>().prop_map(NvValue::Int64),
            any::<u64>().prop_map(NvValue::Uint64),
            any::<i64>().prop_map(NvValue::Hrtime),
            (-1e9f64..1e9).prop_map(NvValue::Double),
            arb_string().prop_map(NvValue::String),
            proptest::collection::vec(any::<u8>(), 0..9).prop_map(NvValue::ByteArray),
            proptest::collection::vec(any::<i8>(), 0..5).prop_map(NvValue::Int8Array),
            proptest::collection::vec(any::<u8>(), 0..5).prop_map(NvValue::Uint8Array),
            proptest::collection::vec(any::<i16>(), 0..5).prop_map(NvValue::Int16Array),
            proptest::collection::vec(any::<u16>(), 0..5).prop_map(NvValue::Uint16Array),
            proptest::collection::vec(any::<i32>(), 0..5).prop_map(NvValue::Int32Array),
            proptest::collection::vec(any::<u32>(), 0..5).prop_map(NvValue::Uint32Array),
            proptest::collection::vec(any::<i64>(), 0..5).prop_map(NvValue::Int64Array),
            proptest::collection::vec(any::<u64>(), 0..5).prop_map(NvValue::Uint64Array),
            proptest::collection::vec(any::<bool>(), 0..5).prop_map(NvValue::BooleanArray),
            proptest::collection::vec(arb_string(), 0..4).prop_map(NvValue::StringArray),
        ]
    }

    fn arb_list() -> impl Strategy<Value = NvList> {
        let leaf = proptest::collection::vec((arb_string(), arb_scalar()), 0..6)
            .prop_map(|pairs| NvList { flags: 1, pairs });
        leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::collection::vec(
                (
                    arb_string(),
                    prop_oneof![
                        arb_scalar(),
                        inner.clone().prop_map(NvValue::NvList),
                        proptest::collection::vec(inner, 0..3).prop_map(NvValue::NvListArray),
                    ],
                ),
                0..6,
            )
            .prop_map(|pairs| NvList { flags: 1, pairs })
        })
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips(list in arb_list(), big in any::<bool>()) {
            let endian = if big { Endian::Big } else { Endian::Little };
            let packed = list.pack(endian).unwrap();
            prop_assert_eq!(NvList::unpack(&packed).unwrap(), list);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = NvList::unpack(&bytes);
        }

        #[test]
        fn mutated_streams_never_panic(
            list in arb_list(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut packed = list.pack(Endian::Little).unwrap();
            for (at, byte) in flips {
                let len = packed.len();
                packed[at % len] = byte;
            }
            let _ = NvList::unpack(&packed);
        }
    }
}
