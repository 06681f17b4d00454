// Starts Bluesky's reference PDS with an in-memory PLC directory (@atproto/dev-env), accepting the
// platform's handle shapes, and prints "PDS ready at <url>" once it answers.
import { TestNetworkNoAppView } from '@atproto/dev-env'

const port = parseInt(process.env.ACPIPELINE_PDS_PORT || '2583', 10)
const plcPort = parseInt(process.env.ACPIPELINE_PLC_PORT || String(port + 1), 10)
const network = await TestNetworkNoAppView.create({
  pds: {
    port,
    hostname: 'localhost',
    serviceHandleDomains: ['.at.aesthetic.computer', '.pds.aesthetic.computer', '.test'],
    blobUploadLimit: parseInt(process.env.ACPIPELINE_PDS_BLOB_LIMIT || '5242880', 10),
    ...(process.env.ACPIPELINE_PDS_DATA
      ? {
          dataDirectory: `${process.env.ACPIPELINE_PDS_DATA}/data`,
          blobstoreDiskLocation: `${process.env.ACPIPELINE_PDS_DATA}/blobs`,
        }
      : {}),
    ...(process.env.PDS_ADMIN_PASSWORD ? { adminPassword: process.env.PDS_ADMIN_PASSWORD } : {}),
    // the PDS's own rate limits (per IP, and write points per account), off by default in dev mode
    ...(process.env.ACPIPELINE_PDS_RATE_LIMITS ? { rateLimitsEnabled: true } : {}),
    // a request carrying `x-ratelimit-bypass: <this key>` is not limited (the PDS's PDS_RATE_LIMIT_BYPASS_KEY)
    ...(process.env.PDS_RATE_LIMIT_BYPASS_KEY
      ? { rateLimitBypassKey: process.env.PDS_RATE_LIMIT_BYPASS_KEY }
      : {}),
  },
  plc: { port: plcPort },
})
console.log(`PDS ready at ${network.pds.url}`)

const shutdown = async () => {
  await network.close()
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
