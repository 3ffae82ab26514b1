"""BIOS data area (segment 0040h) fields this BIOS keeps, by physical address."""

from __future__ import annotations

COM1_BASE = 0x400  # u16 x4: serial port bases
EQUIPMENT = 0x410  # u16: int 11h equipment word
BASE_MEMORY_KIB = 0x413  # u16: int 12h conventional memory
SHIFT_FLAGS = 0x417  # u8: keyboard shift/lock state (int 16h 02h)
SHIFT_FLAGS2 = 0x418  # u8: extended shift state (int 16h 12h high byte)
KBD_HEAD = 0x41A  # u16: offset (from 0400h) of the next key to read
KBD_TAIL = 0x41C  # u16: offset of the next free slot
KBD_BUFFER = 0x41E  # 16 words: the classic 32-byte key ring
EBDA_SEGMENT = 0x40E  # u16
FLOPPY_LAST_STATUS = 0x441  # u8: int 13h status of the last floppy operation
VIDEO_MODE = 0x449  # u8
VIDEO_COLUMNS = 0x44A  # u16
VIDEO_PAGE_SIZE = 0x44C  # u16
VIDEO_PAGE_OFFSET = 0x44E  # u16
CURSOR_POS = 0x450  # 8 x (column, row)
CURSOR_SHAPE = 0x460  # u16: end line, start line
VIDEO_PAGE = 0x462  # u8: active page
CRTC_PORT = 0x463  # u16
VIDEO_MODE_CTL = 0x465  # u8: CGA mode control register value
VIDEO_PALETTE = 0x466  # u8
TICKS = 0x46C  # u32: timer ticks since midnight (int 08h)
MIDNIGHT = 0x470  # u8: the tick count wrapped (int 1Ah 00h reads and clears it)
DISK_LAST_STATUS = 0x474  # u8: int 13h status of the last hard disk operation
HARD_DISKS = 0x475  # u8: number of hard disks
KBD_BUFFER_START = 0x480  # u16
KBD_BUFFER_END = 0x482  # u16
VIDEO_ROWS = 0x484  # u8: rows - 1
CHAR_HEIGHT = 0x485  # u16
VIDEO_FLAGS = 0x487  # u8: EGA/VGA misc info
VIDEO_SWITCHES = 0x488  # u8
VGA_FLAGS = 0x489  # u8
DCC_INDEX = 0x48A  # u8: display combination code index
KBD_STATUS3 = 0x496  # u8: 101-key keyboard present etc.

BDA_SIZE = 0x100  # from layout.BDA_START
