package fleet

// CheckPeerFile is checkPeerFile, for the fuzz target.
var CheckPeerFile = checkPeerFile
