//! Who a board is, read from its MAC address, so one firmware image serves
//! every board of a cluster.
//!
//! The MAC is `02:c0:ac:00:<boards>:<id>` (locally administered): byte 4 is
//! the number of boards in the cluster (1 to [`MAX_BOARDS`]), byte 5 the
//! board's node id (1 to `boards`). The board's IPv4 address is
//! `169.254.77.<id>` (link-local: the cluster's frames never leave the
//! emulated Ethernet) and every board listens on [`UDP_PORT`].
//!
//! ```
//! use coracle_embedded::board::{mac_for, Board};
//!
//! let board = Board::from_mac(mac_for(2, 3)).expect("a cluster MAC");
//! assert_eq!(board.id(), 2);
//! assert_eq!(board.ip(), [169, 254, 77, 2]);
//! assert_eq!(board.members().as_slice(), &[1, 2, 3]);
//! assert_eq!(board.peers().as_slice(), &[1, 3]);
//! ```

use core::fmt;

use coracle::NodeId;

/// The most boards in a cluster.
pub const MAX_BOARDS: usize = 5;

/// The first three bytes of every cluster MAC.
pub const MAC_PREFIX: [u8; 3] = [0x02, 0xc0, 0xac];

/// The UDP port of the Raft traffic.
pub const UDP_PORT: u16 = 7700;

/// The first three bytes of every board's IPv4 address.
pub const IP_PREFIX: [u8; 3] = [169, 254, 77];

/// The MAC address of board `id` in a cluster of `boards`.
#[must_use]
pub const fn mac_for(id: u8, boards: u8) -> [u8; 6] {
    [MAC_PREFIX[0], MAC_PREFIX[1], MAC_PREFIX[2], 0, boards, id]
}

/// The IPv4 address of board `id`.
#[must_use]
pub const fn ip_of(id: NodeId) -> [u8; 4] {
    [IP_PREFIX[0], IP_PREFIX[1], IP_PREFIX[2], id as u8]
}

/// A MAC address that does not name a board of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAClusterMac(pub [u8; 6]);

impl fmt::Display for NotAClusterMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} is not 02:c0:ac:00:<boards 1-{MAX_BOARDS}>:<id 1-boards>",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A board's place in its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Board {
    id: u8,
    boards: u8,
}

impl Board {
    /// Reads the board's id and the cluster's size from its MAC.
    ///
    /// # Errors
    /// [`NotAClusterMac`] if the MAC is not one of [`mac_for`]'s.
    pub fn from_mac(mac: [u8; 6]) -> Result<Self, NotAClusterMac> {
        let [a, b, c, zero, boards, id] = mac;
        let ok = [a, b, c] == MAC_PREFIX
            && zero == 0
            && (1..=MAX_BOARDS as u8).contains(&boards)
            && (1..=boards).contains(&id);
        if ok {
            Ok(Self { id, boards })
        } else {
            Err(NotAClusterMac(mac))
        }
    }

    /// The board's node id.
    #[must_use]
    pub const fn id(&self) -> NodeId {
        self.id as NodeId
    }

    /// The number of boards in the cluster.
    #[must_use]
    pub const fn boards(&self) -> usize {
        self.boards as usize
    }

    /// The board's IPv4 address.
    #[must_use]
    pub const fn ip(&self) -> [u8; 4] {
        ip_of(self.id as NodeId)
    }

    /// Every member's node id, this board's included.
    #[must_use]
    pub fn members(&self) -> heapless::Vec<NodeId, MAX_BOARDS> {
        (1..=self.boards as NodeId).collect()
    }

    /// The other members' node ids.
    #[must_use]
    pub fn peers(&self) -> heapless::Vec<NodeId, MAX_BOARDS> {
        (1..=self.boards as NodeId)
            .filter(|&id| id != self.id as NodeId)
            .collect()
    }

    /// A seed for the node's election jitter, different on every board.
    #[must_use]
    pub const fn seed(&self) -> u64 {
        0x9e37_79b9_7f4a_7c15u64.wrapping_mul(self.id as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_of_every_size_round_trips() {
        for boards in 1..=MAX_BOARDS as u8 {
            for id in 1..=boards {
                let b = Board::from_mac(mac_for(id, boards)).unwrap();
                assert_eq!(
                    (b.id(), b.boards()),
                    (NodeId::from(id), usize::from(boards))
                );
                assert_eq!(b.peers().len(), usize::from(boards) - 1);
                assert!(!b.peers().contains(&b.id()));
            }
        }
    }

    #[test]
    fn foreign_macs_are_refused() {
        for mac in [
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            mac_for(0, 3),
            mac_for(4, 3),
            mac_for(1, 6),
            mac_for(1, 0),
        ] {
            assert_eq!(Board::from_mac(mac), Err(NotAClusterMac(mac)));
        }
    }
}
