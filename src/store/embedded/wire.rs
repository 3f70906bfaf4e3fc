//! The binary primitives the log, the record segments and the binary records share: integers little-endian,
//! strings and byte strings a `u32` length and the bytes, an option a presence byte and the value, a timestamp
//! seconds (`i64`) and nanoseconds (`i32`). A reader that runs out of input or meets a bad value answers
//! `Corrupt`.

use jiff::Timestamp;

use crate::store::StoreError;

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(format!("binary record: {what}"))
}

/// Appends fields to a buffer.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn tag(&mut self, tag: u8) -> &mut Self {
        self.u8(tag)
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn opt_i64(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).i64(v),
            None => self.u8(0),
        }
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("a record is smaller than 4 GiB");
        self.u32(len);
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn strs(&mut self, v: &[String]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("fewer than 4 billion strings"));
        for s in v {
            self.str(s);
        }
        self
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).str(v),
            None => self.u8(0),
        }
    }
    pub fn opt_timestamp(&mut self, v: Option<Timestamp>) -> &mut Self {
        match v {
            Some(v) => self.u8(1).timestamp(v),
            None => self.u8(0),
        }
    }
    pub fn timestamp(&mut self, at: Timestamp) -> &mut Self {
        self.i64(at.as_second());
        self.0.extend_from_slice(&at.subsec_nanosecond().to_le_bytes());
        self
    }
}

/// Reads fields off the front of a slice, advancing it.
pub struct Reader<'a, 'b>(pub &'a mut &'b [u8]);

impl<'b> Reader<'_, 'b> {
    pub fn take(&mut self, n: usize) -> Result<&'b [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("op cut short".into()));
        }
        let (head, rest) = self.0.split_at(n);
        *self.0 = rest;
        Ok(head)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
    pub fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(corrupt(format!("bad bool {v}"))),
        }
    }
    pub fn u32(&mut self) -> Result<u32, StoreError> {
        self.array().map(u32::from_le_bytes)
    }
    pub fn u64(&mut self) -> Result<u64, StoreError> {
        self.array().map(u64::from_le_bytes)
    }
    pub fn i64(&mut self) -> Result<i64, StoreError> {
        self.array().map(i64::from_le_bytes)
    }
    pub fn opt_i64(&mut self) -> Result<Option<i64>, StoreError> {
        Ok(if self.bool()? { Some(self.i64()?) } else { None })
    }
    pub fn raw(&mut self) -> Result<&'b [u8], StoreError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        self.raw().map(<[u8]>::to_vec)
    }
    pub fn str(&mut self) -> Result<&'b str, StoreError> {
        std::str::from_utf8(self.raw()?).map_err(|_| corrupt("string is not UTF-8".into()))
    }
    pub fn string(&mut self) -> Result<String, StoreError> {
        self.str().map(str::to_string)
    }
    pub fn strings(&mut self) -> Result<Vec<String>, StoreError> {
        // Each string takes at least its 4-byte length, which bounds what a corrupt count can allocate.
        let n = self.count(4)?;
        (0..n).map(|_| self.string()).collect()
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, StoreError> {
        Ok(if self.bool()? { Some(self.string()?) } else { None })
    }
    pub fn opt_timestamp(&mut self) -> Result<Option<Timestamp>, StoreError> {
        Ok(if self.bool()? { Some(self.timestamp()?) } else { None })
    }
    /// A count of items that each take at least `min_bytes`, checked against what is left (a corrupt count
    /// cannot make a reader allocate beyond the input).
    pub fn count(&mut self, min_bytes: usize) -> Result<usize, StoreError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min_bytes.max(1) {
            return Err(corrupt("a count exceeds what follows".into()));
        }
        Ok(n)
    }
    pub fn timestamp(&mut self) -> Result<Timestamp, StoreError> {
        let seconds = self.i64()?;
        let nanos = i32::from_le_bytes(self.array()?);
        Timestamp::new(seconds, nanos).map_err(|e| corrupt(format!("bad timestamp: {e}")))
    }
}
