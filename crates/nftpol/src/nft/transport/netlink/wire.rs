//! Netlink framing: the message and attribute writer, and the reader of
//! the messages of a datagram. Nothing here knows nf_tables; ctnetlink
//! (`crate::conntrack`) uses it too.

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_APPEND: u16 = 0x800;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

/// Netlink message and attribute writer (native-endian headers, 4-byte
/// alignment).
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// `nlmsghdr` + `nfgenmsg`; returns the message's offset.
    pub(crate) fn msg_start(
        &mut self,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        at
    }

    pub(crate) fn msg_end(&mut self, at: usize) {
        self.pad();
        let len = (self.buf.len() - at) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).expect("small attribute");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A big-endian u32, as nf_tables attributes are.
    pub(crate) fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    pub(crate) fn attr_str(&mut self, ty: u16, s: &str) {
        let mut z = Vec::with_capacity(s.len() + 1);
        z.extend_from_slice(s.as_bytes());
        z.push(0);
        self.attr(ty, &z);
    }

    pub(crate) fn nest_start(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    pub(crate) fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("element lists are split below 64 KiB");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One netlink message of a datagram.
pub(crate) struct Message<'a> {
    pub(crate) ty: u16,
    pub(crate) seq: u32,
    /// What follows the 16-byte header.
    pub(crate) payload: &'a [u8],
}

impl Message<'_> {
    /// The code of an `NLMSG_ERROR` (0: an acknowledgement).
    pub(crate) fn error_code(&self) -> Option<i32> {
        (self.ty == NLMSG_ERROR && self.payload.len() >= 4)
            .then(|| i32::from_ne_bytes(self.payload[0..4].try_into().expect("4 bytes")))
    }
}

/// The messages of a datagram, up to the first malformed one.
pub(crate) fn messages(mut data: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > data.len() {
            return None;
        }
        let message = Message {
            ty: u16::from_ne_bytes([data[4], data[5]]),
            seq: u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes")),
            payload: &data[16..len],
        };
        data = &data[len.next_multiple_of(4).min(data.len())..];
        Some(message)
    })
}
