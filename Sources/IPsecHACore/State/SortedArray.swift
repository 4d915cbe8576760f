extension Array where Element: Comparable {
    /// The first position in this ascending array whose value is not below `value`: where it
    /// is, or would be inserted. The end is tried first: the SPIs of an IKE SA's Child SAs and
    /// the sequence numbers a receiver holds mostly arrive in ascending order.
    @inlinable package func sortedPosition(of value: Element) -> Int {
        if let last, last < value { return endIndex }
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if self[middle] < value { low = middle + 1 } else { high = middle }
        }
        return low
    }
}
