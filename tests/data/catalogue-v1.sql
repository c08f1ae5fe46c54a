PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO meta VALUES('schema_version','1');
INSERT INTO meta VALUES('signing_key','4bdafacfdbbe88535685bc34f4c69d785166dcf65f5148eb2934af247fa3001e');
CREATE TABLE accounts (
	account_id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	is_admin INTEGER NOT NULL, 
	credential VARCHAR(64) NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	PRIMARY KEY (account_id), 
	UNIQUE (name), 
	UNIQUE (credential)
);
INSERT INTO accounts VALUES(1,'admin','scrypt$32768$8$1$YGK3tPiBb4bsmT6znXPVXw$wTLD8RoAtvvV8pmSuuxd5qFAsvJa-OgOwZ8xc7F5TjV-_r3qxY7jvBSfoIq6RhzzmBFjlUgmos4E65xNrbfbTA',1,'NIKCauF_8GPyx3KvR387bYryuoFmwkLv',1700000000,1700000000);
CREATE TABLE agent_keys (
	key_id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	revoked BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	PRIMARY KEY (key_id), 
	UNIQUE (name), 
	UNIQUE (key_hash)
);
INSERT INTO agent_keys VALUES(1,'school-1','2286fad6db366d421526f346ed3804395e5d9d3c407ab3b4b17ef14733b3dbbc',0,1700000000);
CREATE TABLE gatherers (
	gather_id INTEGER NOT NULL, 
	mac_addr VARCHAR(64) NOT NULL, 
	ip_addr VARCHAR(64) NOT NULL, 
	name_pc VARCHAR(128) NOT NULL, 
	name_set VARCHAR(128) NOT NULL, 
	os_name VARCHAR(128) NOT NULL, 
	main_rate INTEGER NOT NULL, 
	sub_rate INTEGER NOT NULL, 
	auto_dvr INTEGER NOT NULL, 
	auto_fds INTEGER NOT NULL, 
	slice_val INTEGER NOT NULL, 
	inter_val INTEGER NOT NULL, 
	snap_val INTEGER NOT NULL, 
	status INTEGER NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	PRIMARY KEY (gather_id), 
	UNIQUE (mac_addr)
);
INSERT INTO gatherers VALUES(1,'02000000aa01','10.0.0.5','pc-1','pc-1','Linux',1024,512,0,1,0,0,2,1,1700000000,1700000000);
INSERT INTO gatherers VALUES(2,'02:00:00:00:aa:01','10.0.0.5','pc-1','pc-1','Linux',1024,512,0,1,0,0,2,1,1700000000,1700000000);
INSERT INTO gatherers VALUES(3,'02:00:00:00:bb:02','10.0.0.6','pc-2','pc-2','Linux',1024,512,0,1,0,0,2,1,1700000000,1700000000);
CREATE TABLE sessions (
	session_hash VARCHAR(64) NOT NULL, 
	account_id INTEGER NOT NULL, 
	expires BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	PRIMARY KEY (session_hash), 
	FOREIGN KEY(account_id) REFERENCES accounts (account_id) ON DELETE CASCADE
);
CREATE TABLE cameras (
	camera_id INTEGER NOT NULL, 
	gather_id INTEGER NOT NULL, 
	camera_name VARCHAR(128) NOT NULL, 
	image_id INTEGER NOT NULL, 
	stream_prop INTEGER NOT NULL, 
	stream_url VARCHAR(1024) NOT NULL, 
	stream_mp4 VARCHAR(1024) NOT NULL, 
	device_ip VARCHAR(255) NOT NULL, 
	device_user VARCHAR(128) NOT NULL, 
	device_pass VARCHAR(255) NOT NULL, 
	device_cmd_port INTEGER NOT NULL, 
	device_mirror INTEGER NOT NULL, 
	device_osd INTEGER NOT NULL, 
	device_twice INTEGER NOT NULL, 
	device_show INTEGER NOT NULL, 
	started INTEGER NOT NULL, 
	status INTEGER NOT NULL, 
	clicks BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	PRIMARY KEY (camera_id), 
	FOREIGN KEY(gather_id) REFERENCES gatherers (gather_id) ON DELETE CASCADE
);
INSERT INTO cameras VALUES(1,1,'gate',0,0,'','','192.168.1.65','admin','YWRtaW4xMjM=',8000,0,0,0,1,1,-1,0,1700000000,1700000000);
INSERT INTO cameras VALUES(2,1,'一班',0,1,'','/videos/a.mp4','','','',8000,0,0,0,1,1,0,0,1700000000,1700000000);
INSERT INTO cameras VALUES(3,2,'二班',1,2,'rtsp://10.0.0.9/s','','','','',8000,0,0,0,1,1,0,0,1700000000,1700000000);
INSERT INTO cameras VALUES(4,3,'三班',0,1,'','/videos/c.mp4','','','',8000,0,0,0,1,1,0,0,1700000000,1700000000);
CREATE TABLE snapshots (
	image_id INTEGER NOT NULL, 
	camera_id INTEGER NOT NULL, 
	image_fdfs VARCHAR(1024) NOT NULL, 
	created BIGINT NOT NULL, 
	PRIMARY KEY (image_id), 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO snapshots VALUES(1,3,'/files/snap/b.jpg',1700000000);
CREATE TABLE records (
	record_id INTEGER NOT NULL, 
	gather_id INTEGER NOT NULL, 
	camera_id INTEGER NOT NULL, 
	file_fdfs VARCHAR(1024) NOT NULL, 
	image_fdfs VARCHAR(1024) NOT NULL, 
	file_size BIGINT NOT NULL, 
	duration INTEGER NOT NULL, 
	clicks BIGINT NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	PRIMARY KEY (record_id), 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO records VALUES(1,2,3,'/files/rec/b.mp4','',10,5,0,1700000000,1700000000);
CREATE TABLE courses (
	course_id INTEGER NOT NULL, 
	camera_id INTEGER NOT NULL, 
	repeat_id INTEGER NOT NULL, 
	week_id INTEGER NOT NULL, 
	start_sec INTEGER NOT NULL, 
	elapse_sec INTEGER NOT NULL, 
	created BIGINT NOT NULL, 
	updated BIGINT NOT NULL, 
	PRIMARY KEY (course_id), 
	FOREIGN KEY(camera_id) REFERENCES cameras (camera_id) ON DELETE CASCADE
);
INSERT INTO courses VALUES(1,3,2,1,3600,1800,1700000000,1700000000);
INSERT INTO courses VALUES(2,4,2,2,7200,600,1700000000,1700000000);
CREATE INDEX ix_sessions_account_id ON sessions (account_id);
CREATE INDEX ix_cameras_gather_id ON cameras (gather_id);
CREATE INDEX ix_snapshots_camera_id ON snapshots (camera_id);
CREATE INDEX ix_records_camera_id ON records (camera_id);
CREATE INDEX courses_by_camera_day ON courses (camera_id, week_id);
COMMIT;
