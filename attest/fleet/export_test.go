package fleet

import "database/sql"

// CheckPeerFile is checkPeerFile, for the fuzz target.
var CheckPeerFile = checkPeerFile

// DBStats are store s's connection pool's statistics.
func DBStats(s Store) sql.DBStats { return s.(*sqlStore).db.Stats() }
