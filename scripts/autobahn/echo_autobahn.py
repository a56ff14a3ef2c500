# Autobahn (Twisted) echo server for scripts/autobahn.sh: no Host port check (it sits behind
# weir, whose port the client names), permessage-deflate accepted. Python 2.7, autobahn 0.10.
import sys
from twisted.internet import reactor
from autobahn.twisted.websocket import WebSocketServerProtocol, WebSocketServerFactory
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

class Echo(WebSocketServerProtocol):
    def onMessage(self, payload, isBinary):
        self.sendMessage(payload, isBinary)

def accept(offers):
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)

host, port = sys.argv[1], int(sys.argv[2])
f = WebSocketServerFactory()
f.protocol = Echo
f.setProtocolOptions(perMessageCompressionAccept=accept, failByDrop=False)
reactor.listenTCP(port, f, interface=host)
print("listening %s:%d" % (host, port)); sys.stdout.flush()
reactor.run()
