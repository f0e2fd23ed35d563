//! One virtio-blk request: parsed from a descriptor chain (header, data, status,
//! framed any way across descriptors), checked, and carried out on the image.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use super::bounce::BounceBuffer;
use super::image::{DiskImage, SECTOR_SIZE};
use crate::virtio::chain::{
    split_chain, status_byte, total_len, without_tail, BufCursor, ChainFault, GuestBuf, WarnOnce,
};
use crate::virtio::GuestMemoryMmap;

/// `struct virtio_blk_outhdr`: type, reserved, sector.
const HEADER_LEN: usize = 16;
/// `struct virtio_blk_discard_write_zeroes`: sector, num_sectors, flags.
const RANGE_LEN: usize = 16;
/// Ranges one DISCARD or WRITE_ZEROES request may carry (config `max_*_seg`).
pub(crate) const MAX_RANGES: u32 = 32;
/// Sectors one range may cover (config `max_*_sectors`): 4 GiB minus a page keeps
/// every range's byte length well inside u64 and the kernel's off_t.
pub(crate) const MAX_RANGE_SECTORS: u32 = (u32::MAX >> 9) - 7;

/// What a request's data buffers mean to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// A request parsed from a chain whose framing is sound.
struct Request {
    kind: RequestType,
    sector: u64,
    /// Device-readable bytes after the header.
    data_out: Vec<GuestBuf>,
    /// Device-writable bytes before the status byte.
    data_in: Vec<GuestBuf>,
    status: GuestAddress,
}

/// What the device does with one chain: the status it reports (if it found where),
/// and how many bytes it wrote into the chain for the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Completion {
    status: Option<(GuestAddress, u8)>,
    used_len: u32,
}

/// Everything one request needs besides its chain.
pub(crate) struct RequestContext<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub disk: &'a DiskImage,
    pub bounce: &'a mut BounceBuffer,
    pub warn: &'a mut WarnOnce,
}

/// Parses and carries out the request in `chain`, writes its status byte, and
/// returns the length for the used ring. Never fails: a broken chain completes
/// with IOERR when it has a writable status byte, and with length 0 otherwise.
pub(crate) fn handle_chain(
    ctx: &mut RequestContext<'_>,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let completion = match parse(ctx.mem, chain) {
        Ok(request) => execute(ctx, &request),
        Err((fault, status)) => {
            ctx.warn.warn(fault.describe(), "malformed request, failed");
            Completion {
                status: status.map(|addr| (addr, VIRTIO_BLK_S_IOERR as u8)),
                used_len: u32::from(status.is_some()),
            }
        }
    };
    if let Some((addr, status)) = completion.status {
        if let Err(e) = ctx.mem.write_obj(status, addr) {
            ctx.warn.warn("cannot write a request's status", e);
            return 0;
        }
    }
    completion.used_len
}

/// Why a chain is not a request, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Malformed {
    Chain(ChainFault),
    NoStatus,
    HeaderTooShort,
}

impl Malformed {
    fn describe(self) -> &'static str {
        match self {
            Malformed::Chain(fault) => fault.describe(),
            Malformed::NoStatus => "no device-writable status byte",
            Malformed::HeaderTooShort => "request header shorter than 16 bytes",
        }
    }
}

fn parse(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Request, (Malformed, Option<GuestAddress>)> {
    let bufs = split_chain(mem, chain);
    let status = status_byte(mem, &bufs.writable);
    if let Some(fault) = bufs.fault {
        return Err((Malformed::Chain(fault), status));
    }
    let Some(status) = status else {
        return Err((Malformed::NoStatus, None));
    };
    let mut header = [0u8; HEADER_LEN];
    let mut readable = BufCursor::new(&bufs.readable);
    if readable.read_exact(mem, &mut header).is_err() {
        return Err((Malformed::HeaderTooShort, Some(status)));
    }
    let kind = RequestType::from_raw(u32::from_le_bytes(le_bytes(&header[0..4])));
    let sector = u64::from_le_bytes(le_bytes(&header[8..16]));
    Ok(Request {
        kind,
        sector,
        data_out: readable.remaining(),
        data_in: without_tail(&bufs.writable, 1),
        status,
    })
}

fn le_bytes<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// Why a well-framed request failed, for the log.
#[derive(Debug)]
enum Failure {
    /// The driver broke a rule of the request type.
    Driver(&'static str),
    /// The driver asked for something the device does not do.
    Unsupp(&'static str),
    /// The host could not do the I/O.
    Io(std::io::Error),
}

fn execute(ctx: &mut RequestContext<'_>, req: &Request) -> Completion {
    let result = match req.kind {
        RequestType::In => read(ctx, req),
        RequestType::Out => write(ctx, req),
        RequestType::Flush => flush(ctx, req),
        RequestType::GetId => get_id(ctx, req),
        RequestType::Discard | RequestType::WriteZeroes => ranges(ctx, req),
        RequestType::Unsupported(raw) => {
            ctx.warn.warn("unsupported request type", raw);
            return Completion {
                status: Some((req.status, VIRTIO_BLK_S_UNSUPP as u8)),
                used_len: 1,
            };
        }
    };
    match result {
        Ok(written) => Completion {
            status: Some((req.status, VIRTIO_BLK_S_OK as u8)),
            // Bytes written to the guest: the data plus the status byte.
            used_len: written.saturating_add(1),
        },
        Err(Failure::Unsupp(what)) => {
            ctx.warn.warn(what, "request unsupported");
            Completion {
                status: Some((req.status, VIRTIO_BLK_S_UNSUPP as u8)),
                used_len: 1,
            }
        }
        Err(Failure::Driver(what)) => {
            ctx.warn.warn(what, "request failed");
            ioerr(req)
        }
        Err(Failure::Io(e)) => {
            ctx.warn.warn(
                "I/O error",
                format_args!("{}: {e}", ctx.disk.path().display()),
            );
            ioerr(req)
        }
    }
}

fn ioerr(req: &Request) -> Completion {
    Completion {
        status: Some((req.status, VIRTIO_BLK_S_IOERR as u8)),
        used_len: 1,
    }
}

/// The byte range of a data transfer at the request's sector, checked against the
/// image.
fn data_range(ctx: &RequestContext<'_>, sector: u64, len: u64) -> Result<u64, Failure> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Failure::Driver("data length is not a multiple of 512"));
    }
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(Failure::Driver("sector number overflows"))?;
    if !ctx.disk.contains(offset, len) {
        return Err(Failure::Driver("request goes past the end of the disk"));
    }
    Ok(offset)
}

fn read(ctx: &mut RequestContext<'_>, req: &Request) -> Result<u32, Failure> {
    if !req.data_out.is_empty() {
        return Err(Failure::Driver("read request carries device-readable data"));
    }
    let len = total_len(&req.data_in);
    let offset = data_range(ctx, req.sector, len)?;
    ctx.disk
        .read_to_guest(ctx.mem, &req.data_in, offset, ctx.bounce)
        .map_err(Failure::Io)?;
    // The chain is at most 4 GiB (virtio-queue stops longer ones), minus the status.
    Ok(u32::try_from(len).unwrap_or(u32::MAX))
}

fn write(ctx: &mut RequestContext<'_>, req: &Request) -> Result<u32, Failure> {
    if !req.data_in.is_empty() {
        return Err(Failure::Driver(
            "write request carries device-writable data",
        ));
    }
    if ctx.disk.readonly() {
        return Err(Failure::Driver("write to a read-only disk"));
    }
    let len = total_len(&req.data_out);
    let offset = data_range(ctx, req.sector, len)?;
    ctx.disk
        .write_from_guest(ctx.mem, &req.data_out, offset, ctx.bounce)
        .map_err(Failure::Io)?;
    Ok(0)
}

fn flush(ctx: &mut RequestContext<'_>, req: &Request) -> Result<u32, Failure> {
    if !req.data_out.is_empty() || !req.data_in.is_empty() {
        return Err(Failure::Driver("flush request carries data"));
    }
    ctx.disk.flush().map_err(Failure::Io)?;
    Ok(0)
}

fn get_id(ctx: &mut RequestContext<'_>, req: &Request) -> Result<u32, Failure> {
    if !req.data_out.is_empty() {
        return Err(Failure::Driver(
            "get-id request carries device-readable data",
        ));
    }
    // A buffer shorter than the 20-byte id gets its beginning (the spec wants 20).
    let written = BufCursor::new(&req.data_in)
        .write(ctx.mem, ctx.disk.serial())
        .map_err(Failure::Io)?;
    Ok(written as u32)
}

/// DISCARD and WRITE_ZEROES: a list of (sector, num_sectors, flags) ranges.
fn ranges(ctx: &mut RequestContext<'_>, req: &Request) -> Result<u32, Failure> {
    if !req.data_in.is_empty() {
        return Err(Failure::Driver(
            "discard/write-zeroes request carries device-writable data",
        ));
    }
    if ctx.disk.readonly() {
        return Err(Failure::Driver(
            "discard or write-zeroes on a read-only disk",
        ));
    }
    let len = total_len(&req.data_out);
    if len == 0 || !len.is_multiple_of(RANGE_LEN as u64) {
        return Err(Failure::Driver(
            "discard/write-zeroes data is not a list of 16-byte ranges",
        ));
    }
    if len / RANGE_LEN as u64 > u64::from(MAX_RANGES) {
        return Err(Failure::Driver(
            "more discard/write-zeroes ranges than max_*_seg",
        ));
    }
    // Check every range before touching the image, so a bad one changes nothing.
    let mut parsed = Vec::new();
    let mut cursor = BufCursor::new(&req.data_out);
    for _ in 0..len / RANGE_LEN as u64 {
        let mut raw = [0u8; RANGE_LEN];
        cursor.read_exact(ctx.mem, &mut raw).map_err(Failure::Io)?;
        let sector = u64::from_le_bytes(le_bytes(&raw[0..8]));
        let sectors = u32::from_le_bytes(le_bytes(&raw[8..12]));
        let flags = u32::from_le_bytes(le_bytes(&raw[12..16]));
        parsed.push(check_range(ctx, req.kind, sector, sectors, flags)?);
    }
    for (offset, bytes, unmap) in parsed {
        let result = if req.kind == RequestType::Discard {
            ctx.disk.discard(offset, bytes)
        } else {
            ctx.disk.write_zeroes(offset, bytes, unmap, ctx.bounce)
        };
        result.map_err(Failure::Io)?;
    }
    Ok(0)
}

/// One discard/write-zeroes range as (byte offset, byte length, may unmap).
fn check_range(
    ctx: &RequestContext<'_>,
    kind: RequestType,
    sector: u64,
    sectors: u32,
    flags: u32,
) -> Result<(u64, u64, bool), Failure> {
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    let allowed = if kind == RequestType::WriteZeroes {
        VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(Failure::Unsupp(
            "discard/write-zeroes range has unsupported flags",
        ));
    }
    if sectors > MAX_RANGE_SECTORS {
        return Err(Failure::Driver(
            "discard/write-zeroes range larger than max_*_sectors",
        ));
    }
    let bytes = u64::from(sectors) * SECTOR_SIZE;
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(Failure::Driver("sector number overflows"))?;
    if !ctx.disk.contains(offset, bytes) {
        return Err(Failure::Driver(
            "discard/write-zeroes range goes past the end of the disk",
        ));
    }
    Ok((offset, bytes, unmap))
}
